"""One configuration: a typed, frozen settings model, read whole by one loader.

``aidr_gate.settings.loader.load_config(path)`` reads the file (with the ``file:line`` machinery
of :mod:`aidr_gate.document`), the top-level keys (``policy``, ``mode``, ``registry``,
``catalog``) and every registered section, checks everything they name (pack ids, data files, key
files, JWKS URLs, GeoIP databases and their types, the audit directory, sink addresses, proxy
limits), and raises one :class:`~aidr_gate.errors.ConfigError` listing every problem as
``file:line: key.path: message``, with "did you mean" for keys and pack ids. ``validate``,
``check``, ``serve``, the middleware and :class:`~aidr_gate.runtime.Runtime` all load through it,
so ``validate`` passes exactly when ``serve`` would start.

Adding a section takes three things, in the module that owns the setting:

1. A frozen dataclass whose field defaults are the section's defaults (written once, there)::

       @dataclass(frozen=True, slots=True)
       class LimitsSettings:
           max_header_bytes: int = 16_384

2. A reader with the uniform signature ``read(check, raw, base_dir) -> Settings | None``: *raw* is
   the section as written (``None`` when absent: return the defaults), every problem goes to
   ``check.error(key_path, message)`` (``check.mapping(raw, "limits", keys=...)`` reports unknown
   keys with a "did you mean"), relative paths resolve against *base_dir*; return ``None`` only
   when the section cannot be read at all. Check here what the settings name (open the file, parse
   the URL): what the reader accepts, the start must accept.

3. A :class:`~aidr_gate.settings.schema.Section` naming it, with its documented keys (the
   README's configuration reference is tested against them) and the keys only a restart applies,
   added to :data:`aidr_gate.settings.sections.SECTIONS`::

       LIMITS = Section("limits", read_limits, KEYS, restart=("max_header_bytes",))

   Two optional fields: ``doc=`` gives the section a row of its own in the reference (a section
   that may be one value, as ``registry: entities.yaml``), and ``rule=`` decides restart-only
   changes from the values when the key names alone cannot (``aidr_gate.stores.settings``: another
   registry file applies, another database store waits for a restart).

Code then reads ``config.get(LIMITS)``. A reload reads the whole file again into a new
:class:`~aidr_gate.settings.loader.GateConfig`; the runtime rebuilds what depends on it and swaps
it in at once. A restart-only key that changed keeps its running value, is named in a warning
("needs a restart"), in ``/readyz`` and in the ``aidr_gate_reload_restart_pending`` gauge.
"""
