-- The entity registry: entities, their agreements, owners and screening reviews, with constraints
-- that refuse what the file validator refuses, a change log, and LISTEN/NOTIFY on every change.
-- Applied by `aidr-gate registry migrate`, in one transaction, recorded in schema_migrations.

CREATE FUNCTION aidr_registry.is_country(code text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT code = ANY ('{AD,AE,AF,AG,AI,AL,AM,AO,AQ,AR,AS,AT,AU,AW,AX,AZ,BA,BB,BD,BE,BF,BG,BH,BI,BJ,BL,BM,BN,BO,BQ,BR,BS,BT,BV,BW,BY,BZ,CA,CC,CD,CF,CG,CH,CI,CK,CL,CM,CN,CO,CR,CU,CV,CW,CX,CY,CZ,DE,DJ,DK,DM,DO,DZ,EC,EE,EG,EH,ER,ES,ET,FI,FJ,FK,FM,FO,FR,GA,GB,GD,GE,GF,GG,GH,GI,GL,GM,GN,GP,GQ,GR,GS,GT,GU,GW,GY,HK,HM,HN,HR,HT,HU,ID,IE,IL,IM,IN,IO,IQ,IR,IS,IT,JE,JM,JO,JP,KE,KG,KH,KI,KM,KN,KP,KR,KW,KY,KZ,LA,LB,LC,LI,LK,LR,LS,LT,LU,LV,LY,MA,MC,MD,ME,MF,MG,MH,MK,ML,MM,MN,MO,MP,MQ,MR,MS,MT,MU,MV,MW,MX,MY,MZ,NA,NC,NE,NF,NG,NI,NL,NO,NP,NR,NU,NZ,OM,PA,PE,PF,PG,PH,PK,PL,PM,PN,PR,PS,PT,PW,PY,QA,RE,RO,RS,RU,RW,SA,SB,SC,SD,SE,SG,SH,SI,SJ,SK,SL,SM,SN,SO,SR,SS,ST,SV,SX,SY,SZ,TC,TD,TF,TG,TH,TJ,TK,TL,TM,TN,TO,TR,TT,TV,TW,TZ,UA,UG,UM,US,UY,UZ,VA,VC,VE,VG,VI,VN,VU,WF,WS,XK,YE,YT,ZA,ZM,ZW}'::text[])
$$;

-- Agreement scopes: '*' or a list of names, never empty.
CREATE FUNCTION aidr_registry.valid_countries(codes text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT cardinality(codes) > 0
  AND (SELECT bool_and(c = '*' OR aidr_registry.is_country(c)) FROM unnest(codes) AS c)
$$;

CREATE FUNCTION aidr_registry.valid_tiers(tiers text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT cardinality(tiers) > 0
  AND (SELECT bool_and(t = '*' OR t ~ '^[a-z0-9][a-z0-9._-]{0,127}$') FROM unnest(tiers) AS t)
$$;

CREATE FUNCTION aidr_registry.all_text(names text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT coalesce((SELECT bool_and(n ~ '\S') FROM unnest(names) AS n), true)
$$;

CREATE DOMAIN aidr_registry.instant AS timestamptz
  CHECK (VALUE >= '0001-01-01T00:00:00Z' AND VALUE < '10000-01-01T00:00:00Z');

CREATE TABLE aidr_registry.entities (
  id            text PRIMARY KEY CHECK (id ~ '\S' AND char_length(id) <= 256),
  name          text,
  headquarters  text NOT NULL CHECK (aidr_registry.is_country(headquarters)),
  parent        text CHECK (parent IS NULL OR aidr_registry.is_country(parent)),
  denied        boolean NOT NULL DEFAULT false,
  denied_reason text CHECK (denied_reason IS NULL OR denied_reason ~ '\S'),
  aliases       text[] NOT NULL DEFAULT '{}' CHECK (aidr_registry.all_text(aliases)),
  ownership     text NOT NULL DEFAULT 'unknown'
                CHECK (ownership IN ('complete', 'partial', 'unknown')),
  updated_at    timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE aidr_registry.agreements (
  entity_id   text NOT NULL REFERENCES aidr_registry.entities (id)
              ON DELETE CASCADE ON UPDATE CASCADE,
  id          text NOT NULL CHECK (id ~ '\S'),
  position    integer NOT NULL DEFAULT 0,
  type        text NOT NULL
              CHECK (type IN ('uveu', 'nveu', 'security-agreement', 'license', 'contract')),
  status      text NOT NULL CHECK (status IN ('active', 'suspended', 'revoked', 'expired')),
  valid_from  aidr_registry.instant,
  valid_until aidr_registry.instant,
  model_tiers text[] NOT NULL DEFAULT '{*}' CHECK (aidr_registry.valid_tiers(model_tiers)),
  countries   text[] NOT NULL DEFAULT '{*}' CHECK (aidr_registry.valid_countries(countries)),
  PRIMARY KEY (entity_id, id),
  CONSTRAINT window_ordered CHECK (valid_until > valid_from)
);

CREATE TABLE aidr_registry.owners (
  entity_id    text NOT NULL REFERENCES aidr_registry.entities (id)
               ON DELETE CASCADE ON UPDATE CASCADE,
  position     integer NOT NULL DEFAULT 0,
  -- An owner in the registry must exist (checked at commit, so a whole import can be written in
  -- any order); removing an entity that still owns another is refused.
  owner_entity text REFERENCES aidr_registry.entities (id)
               ON DELETE NO ACTION ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED,
  name         text CHECK (name IS NULL OR name ~ '\S'),
  country      text CHECK (country IS NULL OR aidr_registry.is_country(country)),
  share        double precision NOT NULL CHECK (share > 0 AND share <= 100),
  CONSTRAINT owner_named CHECK (owner_entity IS NOT NULL OR name IS NOT NULL),
  CONSTRAINT owner_listed_once UNIQUE (entity_id, owner_entity),
  CONSTRAINT not_own_owner CHECK (owner_entity IS DISTINCT FROM entity_id)
);
CREATE INDEX owners_entity ON aidr_registry.owners (entity_id);
CREATE INDEX owners_owner ON aidr_registry.owners (owner_entity);

CREATE TABLE aidr_registry.screening_reviews (
  entity_id text NOT NULL REFERENCES aidr_registry.entities (id)
            ON DELETE CASCADE ON UPDATE CASCADE,
  position  integer NOT NULL DEFAULT 0,
  entry     text NOT NULL CHECK (entry ~ '\S'),
  decision  text NOT NULL CHECK (decision IN ('confirmed', 'false-positive')),
  reviewer  text NOT NULL CHECK (reviewer ~ '\S'),
  at        aidr_registry.instant NOT NULL,
  why       text NOT NULL CHECK (why ~ '\S'),
  name      text CHECK (name IS NULL OR name ~ '\S')
);
CREATE INDEX screening_reviews_entity ON aidr_registry.screening_reviews (entity_id);

-- Shares of one entity add up to at most 100, and ownership has no cycle: checked at commit,
-- once per changed entity, as the file validator checks them at load.
CREATE FUNCTION aidr_registry.check_owners() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  subject text := coalesce(NEW.entity_id, OLD.entity_id);
  total double precision;
BEGIN
  SELECT coalesce(sum(share), 0) INTO total FROM aidr_registry.owners WHERE entity_id = subject;
  IF total > 100 + 1e-9 THEN
    RAISE EXCEPTION 'entity %: owner shares add up to more than 100 (%)', subject, total
      USING ERRCODE = 'check_violation';
  END IF;
  IF EXISTS (
    WITH RECURSIVE walk (id) AS (
      SELECT owner_entity FROM aidr_registry.owners
       WHERE entity_id = subject AND owner_entity IS NOT NULL
      UNION
      SELECT o.owner_entity FROM aidr_registry.owners o JOIN walk w ON o.entity_id = w.id
       WHERE o.owner_entity IS NOT NULL
    )
    SELECT 1 FROM walk WHERE id = subject
  ) THEN
    RAISE EXCEPTION 'entity %: ownership cycle', subject USING ERRCODE = 'check_violation';
  END IF;
  RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER owners_consistent
  AFTER INSERT OR UPDATE ON aidr_registry.owners
  DEFERRABLE INITIALLY DEFERRED
  FOR EACH ROW EXECUTE FUNCTION aidr_registry.check_owners();

-- The revision: one number for the whole registry, raised once by every transaction that changes
-- it. The row lock on state orders writers, so revisions follow commit order and a replica that
-- has read up to revision N has seen every change up to N.
CREATE TABLE aidr_registry.state (
  one            boolean PRIMARY KEY DEFAULT true CHECK (one),
  revision       bigint NOT NULL DEFAULT 0,
  last_xact      xid8,
  -- Changes up to this revision have been pruned from the log: a replica behind it reloads all.
  pruned_through bigint NOT NULL DEFAULT 0
);
INSERT INTO aidr_registry.state DEFAULT VALUES;

-- Which entities each revision changed; entity_id NULL: any may have (a bulk import).
CREATE TABLE aidr_registry.changes (
  revision  bigint NOT NULL,
  entity_id text,
  at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX changes_once ON aidr_registry.changes (revision, coalesce(entity_id, ''));

CREATE FUNCTION aidr_registry.next_revision() RETURNS bigint
LANGUAGE sql AS $$
  UPDATE aidr_registry.state
     SET revision = revision + CASE WHEN last_xact = pg_current_xact_id() THEN 0 ELSE 1 END,
         last_xact = pg_current_xact_id()
  RETURNING revision
$$;

CREATE FUNCTION aidr_registry.record_change(subject text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
  rev bigint := aidr_registry.next_revision();
BEGIN
  INSERT INTO aidr_registry.changes (revision, entity_id) VALUES (rev, subject)
    ON CONFLICT (revision, coalesce(entity_id, '')) DO NOTHING;
  -- Delivered at commit; one notification per transaction (same payload), whatever it changed.
  PERFORM pg_notify('aidr_registry', rev::text);
END $$;

CREATE FUNCTION aidr_registry.log_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  new_id text;
  old_id text;
BEGIN
  IF current_setting('aidr_registry.bulk', true) = 'on' THEN
    RETURN NULL;  -- a bulk import records one change for everything (record_change(NULL))
  END IF;
  IF TG_TABLE_NAME = 'entities' THEN
    IF TG_OP <> 'DELETE' THEN new_id := NEW.id; END IF;
    IF TG_OP <> 'INSERT' THEN old_id := OLD.id; END IF;
  ELSE
    IF TG_OP <> 'DELETE' THEN new_id := NEW.entity_id; END IF;
    IF TG_OP <> 'INSERT' THEN old_id := OLD.entity_id; END IF;
  END IF;
  IF new_id IS NOT NULL THEN PERFORM aidr_registry.record_change(new_id); END IF;
  IF old_id IS NOT NULL AND old_id IS DISTINCT FROM new_id THEN
    PERFORM aidr_registry.record_change(old_id);
  END IF;
  RETURN NULL;
END $$;

CREATE TRIGGER entities_changed AFTER INSERT OR UPDATE OR DELETE ON aidr_registry.entities
  FOR EACH ROW EXECUTE FUNCTION aidr_registry.log_change();
CREATE TRIGGER agreements_changed AFTER INSERT OR UPDATE OR DELETE ON aidr_registry.agreements
  FOR EACH ROW EXECUTE FUNCTION aidr_registry.log_change();
CREATE TRIGGER owners_changed AFTER INSERT OR UPDATE OR DELETE ON aidr_registry.owners
  FOR EACH ROW EXECUTE FUNCTION aidr_registry.log_change();
CREATE TRIGGER screening_reviews_changed
  AFTER INSERT OR UPDATE OR DELETE ON aidr_registry.screening_reviews
  FOR EACH ROW EXECUTE FUNCTION aidr_registry.log_change();
-- TRUNCATE fires no row trigger: it is a change to everything.
CREATE FUNCTION aidr_registry.log_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM aidr_registry.record_change(NULL);
  RETURN NULL;
END $$;
CREATE TRIGGER entities_truncated AFTER TRUNCATE ON aidr_registry.entities
  FOR EACH STATEMENT EXECUTE FUNCTION aidr_registry.log_truncate();

-- Drop change rows older than *keep*; replicas further behind reload everything.
CREATE FUNCTION aidr_registry.prune_changes(keep interval) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
  through bigint;
BEGIN
  SELECT max(revision) INTO through FROM aidr_registry.changes WHERE at < now() - keep;
  IF through IS NOT NULL THEN
    DELETE FROM aidr_registry.changes WHERE revision <= through;
    UPDATE aidr_registry.state SET pruned_through = greatest(pruned_through, through);
  END IF;
  RETURN coalesce(through, 0);
END $$;

-- One row per entity with its agreements, owners and reviews as JSON arrays: what a gate reads.
CREATE VIEW aidr_registry.entity_documents AS
SELECT e.id, e.name, e.headquarters, e.parent, e.denied, e.denied_reason, e.aliases, e.ownership,
  (SELECT json_agg(json_build_array(a.id, a.type, a.status, extract(epoch FROM a.valid_from),
                                    extract(epoch FROM a.valid_until), a.model_tiers, a.countries)
                   ORDER BY a.position, a.id)
     FROM aidr_registry.agreements a WHERE a.entity_id = e.id) AS agreements,
  (SELECT json_agg(json_build_array(o.owner_entity, o.name, o.country, o.share)
                   ORDER BY o.position)
     FROM aidr_registry.owners o WHERE o.entity_id = e.id) AS owners,
  (SELECT json_agg(json_build_array(r.entry, r.decision, r.reviewer, extract(epoch FROM r.at),
                                    r.why, r.name) ORDER BY r.position)
     FROM aidr_registry.screening_reviews r WHERE r.entity_id = e.id) AS screening_reviews
FROM aidr_registry.entities e;
