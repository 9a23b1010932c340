"""The model catalogue: model ids and aliases, training compute, open or closed weights.

Which capability tier a model falls in is the policy pack's business (thresholds are pack data); the
catalogue only records the facts a tier is computed from, and optionally an explicit tier that
overrides the computation.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from aidr_gate.document import Checker, Document, join, load_document


class Weights(StrEnum):
    """Whether a model's weights are published."""

    OPEN = "open"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class Model:
    """One model as the catalogue knows it."""

    id: str
    training_ops: float | None  # total training operations, fine-tuning included
    weights: Weights
    tier: str | None = None  # explicit tier id; overrides the pack's thresholds
    aliases: tuple[str, ...] = ()
    title: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready form for evidence and audit."""
        return {
            "id": self.id,
            "training_ops": self.training_ops,
            "weights": self.weights.value,
            "tier": self.tier,
        }

    @classmethod
    def from_evidence(cls, raw: object, where: str = "model") -> Model | None:
        """The model a decision's ``model`` evidence block describes; ``None`` for an unknown one.

        The block is the one ``Evidence.to_dict`` writes (``known``, ``id``, ``training_ops``,
        ``weights``, ``catalog_tier``; the pack's ``tier`` is not the model's). Raises
        :class:`ValueError` naming the field (under *where*) that is missing or garbled; nothing
        else, whatever *raw* holds.
        """
        if not isinstance(raw, dict):
            raise ValueError(f"missing {where}")

        def required(key: str) -> Any:
            if key not in raw:
                raise ValueError(f"missing {where}.{key}")
            return raw[key]

        if not required("known"):
            return None
        model_id = required("id")
        if not isinstance(model_id, str):
            raise ValueError(f"{where}.id is not text")
        ops = required("training_ops")
        if ops is not None and (isinstance(ops, bool) or not isinstance(ops, int | float)):
            raise ValueError(f"{where}.training_ops is not a number")
        weights = required("weights")
        try:
            weights_value = Weights(weights)
        except ValueError:
            raise ValueError(f"{where}.weights is unknown: {weights!r}") from None
        tier = required("catalog_tier")
        if tier is not None and not isinstance(tier, str):
            raise ValueError(f"{where}.catalog_tier is not text")
        return cls(
            id=model_id,
            training_ops=float(ops) if ops is not None else None,
            weights=weights_value,
            tier=tier,
        )


class ModelCatalog(Protocol):
    """Where models are looked up by id or alias; implementations are immutable once built."""

    source: str

    def get(self, model_id: str) -> Model | None:
        """The model with this id or alias, or ``None``."""
        ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Model]: ...


class InMemoryCatalog:
    """A catalogue held in dicts: exact ids and aliases first, then a case-insensitive match."""

    def __init__(self, models: Iterable[Model], source: str = "<memory>") -> None:
        self._models: list[Model] = list(models)
        self._by_name: dict[str, Model] = {}
        self._by_folded: dict[str, Model] = {}
        for model in self._models:
            for name in (model.id, *model.aliases):
                self._by_name[name] = model
                self._by_folded[name.casefold()] = model
        self.source = source

    def get(self, model_id: str) -> Model | None:
        """The model with this id or alias (exact, then ignoring case), or ``None``."""
        model = self._by_name.get(model_id)
        if model is None:
            model = self._by_folded.get(model_id.casefold())
        return model

    def __len__(self) -> int:
        return len(self._models)

    def __iter__(self) -> Iterator[Model]:
        return iter(self._models)


_MODEL_KEYS = ("aliases", "training_ops", "weights", "tier", "title", "note", "source")

# Model names are whatever the serving stack uses ("meta-llama/Llama-3.1-8B-Instruct"); keep them
# printable and bounded, nothing more.
MAX_MODEL_ID = 256


def _model_name(check: Checker, value: Any, path: str) -> str | None:
    name = check.string(value, path)
    if name is None:
        return None
    if len(name) > MAX_MODEL_ID or not name.isprintable():
        check.error(path, f"model names must be printable and at most {MAX_MODEL_ID} characters")
        return None
    return name


def catalog_from_document(document: Document) -> tuple[InMemoryCatalog, Checker]:
    """Build a catalogue from a parsed document; the checker holds every problem found."""
    check = Checker(document)
    top = check.mapping(document.data, "", keys=("models", "version", "description"))
    raw_models = check.mapping(top.get("models") if top else None, "models")
    models: list[Model] = []
    claimed: dict[str, str] = {}
    for model_id, raw in (raw_models or {}).items():
        path = join("models", model_id)
        if _model_name(check, model_id, path) is None:
            continue
        data = check.mapping(raw, path, keys=_MODEL_KEYS, required=("weights",))
        if data is None:
            continue
        weights = check.string(
            data.get("weights"), join(path, "weights"), choices=[w.value for w in Weights]
        )
        ops = None
        if data.get("training_ops") is not None:
            ops = check.number(data["training_ops"], join(path, "training_ops"), minimum=0)
        elif data.get("tier") is None:
            check.error(
                join(path, "training_ops"), "is required unless the model names an explicit tier"
            )
        tier = None
        if data.get("tier") is not None:
            tier = check.ident(data["tier"], join(path, "tier"), "tier")
        aliases: list[str] = []
        for index, alias in enumerate(
            check.sequence(data.get("aliases", []), join(path, "aliases")) or []
        ):
            name = _model_name(check, alias, join(join(path, "aliases"), index))
            if name is not None:
                aliases.append(name)
        for name in (model_id, *aliases):
            owner = claimed.get(name.casefold())
            if owner is not None and owner != model_id:
                check.error(path, f"name {name!r} is already used by model {owner!r}")
            claimed[name.casefold()] = model_id
        if weights is None:
            continue
        title = data.get("title")
        models.append(
            Model(
                id=model_id,
                training_ops=ops,
                weights=Weights(weights),
                tier=tier,
                aliases=tuple(aliases),
                title=title if isinstance(title, str) else None,
            )
        )
    return InMemoryCatalog(models, source=document.file), check


def load_catalog(path: str | Path) -> InMemoryCatalog:
    """Load and validate a catalogue file; raise :class:`ConfigError` listing every problem."""
    catalog, check = catalog_from_document(load_document(path))
    check.raise_if_errors()
    return catalog
