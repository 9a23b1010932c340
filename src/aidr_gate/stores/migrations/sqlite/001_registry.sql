-- The entity registry in SQLite: the same tables as the PostgreSQL schema, lists as JSON arrays,
-- instants as seconds since the epoch (REAL). Constraints and triggers refuse what the file
-- validator refuses, but for ownership cycles (SQLite triggers cannot walk a graph): `registry
-- import` checks those, with the file validator. Every change is logged with a new revision.

CREATE TABLE countries (code TEXT PRIMARY KEY) WITHOUT ROWID;
INSERT INTO countries (code) VALUES
  ('AD'), ('AE'), ('AF'), ('AG'), ('AI'), ('AL'), ('AM'), ('AO'), ('AQ'), ('AR'), ('AS'), ('AT'),
  ('AU'), ('AW'), ('AX'), ('AZ'), ('BA'), ('BB'), ('BD'), ('BE'), ('BF'), ('BG'), ('BH'), ('BI'),
  ('BJ'), ('BL'), ('BM'), ('BN'), ('BO'), ('BQ'), ('BR'), ('BS'), ('BT'), ('BV'), ('BW'), ('BY'),
  ('BZ'), ('CA'), ('CC'), ('CD'), ('CF'), ('CG'), ('CH'), ('CI'), ('CK'), ('CL'), ('CM'), ('CN'),
  ('CO'), ('CR'), ('CU'), ('CV'), ('CW'), ('CX'), ('CY'), ('CZ'), ('DE'), ('DJ'), ('DK'), ('DM'),
  ('DO'), ('DZ'), ('EC'), ('EE'), ('EG'), ('EH'), ('ER'), ('ES'), ('ET'), ('FI'), ('FJ'), ('FK'),
  ('FM'), ('FO'), ('FR'), ('GA'), ('GB'), ('GD'), ('GE'), ('GF'), ('GG'), ('GH'), ('GI'), ('GL'),
  ('GM'), ('GN'), ('GP'), ('GQ'), ('GR'), ('GS'), ('GT'), ('GU'), ('GW'), ('GY'), ('HK'), ('HM'),
  ('HN'), ('HR'), ('HT'), ('HU'), ('ID'), ('IE'), ('IL'), ('IM'), ('IN'), ('IO'), ('IQ'), ('IR'),
  ('IS'), ('IT'), ('JE'), ('JM'), ('JO'), ('JP'), ('KE'), ('KG'), ('KH'), ('KI'), ('KM'), ('KN'),
  ('KP'), ('KR'), ('KW'), ('KY'), ('KZ'), ('LA'), ('LB'), ('LC'), ('LI'), ('LK'), ('LR'), ('LS'),
  ('LT'), ('LU'), ('LV'), ('LY'), ('MA'), ('MC'), ('MD'), ('ME'), ('MF'), ('MG'), ('MH'), ('MK'),
  ('ML'), ('MM'), ('MN'), ('MO'), ('MP'), ('MQ'), ('MR'), ('MS'), ('MT'), ('MU'), ('MV'), ('MW'),
  ('MX'), ('MY'), ('MZ'), ('NA'), ('NC'), ('NE'), ('NF'), ('NG'), ('NI'), ('NL'), ('NO'), ('NP'),
  ('NR'), ('NU'), ('NZ'), ('OM'), ('PA'), ('PE'), ('PF'), ('PG'), ('PH'), ('PK'), ('PL'), ('PM'),
  ('PN'), ('PR'), ('PS'), ('PT'), ('PW'), ('PY'), ('QA'), ('RE'), ('RO'), ('RS'), ('RU'), ('RW'),
  ('SA'), ('SB'), ('SC'), ('SD'), ('SE'), ('SG'), ('SH'), ('SI'), ('SJ'), ('SK'), ('SL'), ('SM'),
  ('SN'), ('SO'), ('SR'), ('SS'), ('ST'), ('SV'), ('SX'), ('SY'), ('SZ'), ('TC'), ('TD'), ('TF'),
  ('TG'), ('TH'), ('TJ'), ('TK'), ('TL'), ('TM'), ('TN'), ('TO'), ('TR'), ('TT'), ('TV'), ('TW'),
  ('TZ'), ('UA'), ('UG'), ('UM'), ('US'), ('UY'), ('UZ'), ('VA'), ('VC'), ('VE'), ('VG'), ('VI'),
  ('VN'), ('VU'), ('WF'), ('WS'), ('XK'), ('YE'), ('YT'), ('ZA'), ('ZM'), ('ZW');

CREATE TABLE entities (
  id            TEXT PRIMARY KEY CHECK (length(trim(id)) > 0 AND length(id) <= 256),
  name          TEXT,
  headquarters  TEXT NOT NULL REFERENCES countries (code),
  parent        TEXT REFERENCES countries (code),
  denied        INTEGER NOT NULL DEFAULT 0 CHECK (denied IN (0, 1)),
  denied_reason TEXT CHECK (denied_reason IS NULL OR length(trim(denied_reason)) > 0),
  aliases       TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(aliases) AND json_type(aliases) = 'array'),
  ownership     TEXT NOT NULL DEFAULT 'unknown' CHECK (ownership IN ('complete', 'partial', 'unknown'))
) WITHOUT ROWID;

CREATE TABLE agreements (
  entity_id   TEXT NOT NULL REFERENCES entities (id) ON DELETE CASCADE ON UPDATE CASCADE,
  id          TEXT NOT NULL CHECK (length(trim(id)) > 0),
  position    INTEGER NOT NULL DEFAULT 0,
  type        TEXT NOT NULL
              CHECK (type IN ('uveu', 'nveu', 'security-agreement', 'license', 'contract')),
  status      TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked', 'expired')),
  valid_from  REAL CHECK (valid_from IS NULL OR valid_from BETWEEN -62135596800 AND 253402300799),
  valid_until REAL CHECK (valid_until IS NULL OR valid_until BETWEEN -62135596800 AND 253402300799),
  model_tiers TEXT NOT NULL DEFAULT '["*"]' CHECK (json_valid(model_tiers)),
  countries   TEXT NOT NULL DEFAULT '["*"]' CHECK (json_valid(countries)),
  PRIMARY KEY (entity_id, id),
  CHECK (valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from)
) WITHOUT ROWID;

CREATE TABLE owners (
  entity_id    TEXT NOT NULL REFERENCES entities (id) ON DELETE CASCADE ON UPDATE CASCADE,
  position     INTEGER NOT NULL DEFAULT 0,
  owner_entity TEXT REFERENCES entities (id) ON UPDATE CASCADE DEFERRABLE INITIALLY DEFERRED,
  name         TEXT CHECK (name IS NULL OR length(trim(name)) > 0),
  country      TEXT REFERENCES countries (code),
  share        REAL NOT NULL CHECK (share > 0 AND share <= 100),
  CHECK (owner_entity IS NOT NULL OR name IS NOT NULL),
  CHECK (owner_entity IS NULL OR owner_entity <> entity_id),
  UNIQUE (entity_id, owner_entity)
);
CREATE INDEX owners_entity ON owners (entity_id);
CREATE INDEX owners_owner ON owners (owner_entity);

CREATE TABLE screening_reviews (
  entity_id TEXT NOT NULL REFERENCES entities (id) ON DELETE CASCADE ON UPDATE CASCADE,
  position  INTEGER NOT NULL DEFAULT 0,
  entry     TEXT NOT NULL CHECK (length(trim(entry)) > 0),
  decision  TEXT NOT NULL CHECK (decision IN ('confirmed', 'false-positive')),
  reviewer  TEXT NOT NULL CHECK (length(trim(reviewer)) > 0),
  at        REAL NOT NULL,
  why       TEXT NOT NULL CHECK (length(trim(why)) > 0),
  name      TEXT CHECK (name IS NULL OR length(trim(name)) > 0)
);
CREATE INDEX screening_reviews_entity ON screening_reviews (entity_id);

CREATE TRIGGER agreements_scope_insert BEFORE INSERT ON agreements
BEGIN
  SELECT RAISE(ABORT, 'agreement countries must be ISO 3166-1 alpha-2 codes or *')
   WHERE json_array_length(NEW.countries) = 0 OR EXISTS (
     SELECT 1 FROM json_each(NEW.countries)
      WHERE value <> '*' AND value NOT IN (SELECT code FROM countries));
  SELECT RAISE(ABORT, 'agreement model tiers must be tier ids or *')
   WHERE json_array_length(NEW.model_tiers) = 0 OR EXISTS (
     SELECT 1 FROM json_each(NEW.model_tiers)
      WHERE value <> '*' AND NOT (value GLOB '[a-z0-9]*' AND NOT value GLOB '*[^a-z0-9._-]*'
                                  AND length(value) <= 128));
END;
CREATE TRIGGER agreements_scope_update BEFORE UPDATE ON agreements
BEGIN
  SELECT RAISE(ABORT, 'agreement countries must be ISO 3166-1 alpha-2 codes or *')
   WHERE json_array_length(NEW.countries) = 0 OR EXISTS (
     SELECT 1 FROM json_each(NEW.countries)
      WHERE value <> '*' AND value NOT IN (SELECT code FROM countries));
  SELECT RAISE(ABORT, 'agreement model tiers must be tier ids or *')
   WHERE json_array_length(NEW.model_tiers) = 0 OR EXISTS (
     SELECT 1 FROM json_each(NEW.model_tiers)
      WHERE value <> '*' AND NOT (value GLOB '[a-z0-9]*' AND NOT value GLOB '*[^a-z0-9._-]*'
                                  AND length(value) <= 128));
END;
CREATE TRIGGER owners_shares_insert AFTER INSERT ON owners
BEGIN
  SELECT RAISE(ABORT, 'owner shares add up to more than 100')
   WHERE (SELECT sum(share) FROM owners WHERE entity_id = NEW.entity_id) > 100 + 1e-9;
END;
CREATE TRIGGER owners_shares_update AFTER UPDATE ON owners
BEGIN
  SELECT RAISE(ABORT, 'owner shares add up to more than 100')
   WHERE (SELECT sum(share) FROM owners WHERE entity_id = NEW.entity_id) > 100 + 1e-9;
END;

-- One revision for the whole registry; bulk = 1 while `registry import` fills an empty one.
CREATE TABLE state (
  one            INTEGER PRIMARY KEY CHECK (one = 1),
  revision       INTEGER NOT NULL DEFAULT 0,
  pruned_through INTEGER NOT NULL DEFAULT 0,
  bulk           INTEGER NOT NULL DEFAULT 0
);
INSERT INTO state (one) VALUES (1);

-- Which entities each revision changed; entity_id NULL: any may have.
CREATE TABLE changes (
  revision  INTEGER NOT NULL,
  entity_id TEXT,
  at        REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0)
);
CREATE UNIQUE INDEX changes_once ON changes (revision, coalesce(entity_id, ''));

CREATE TRIGGER entities_insert AFTER INSERT ON entities
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.id FROM state;
END;

CREATE TRIGGER entities_update AFTER UPDATE ON entities
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.id FROM state;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.id FROM state;
END;

CREATE TRIGGER entities_delete AFTER DELETE ON entities
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.id FROM state;
END;

CREATE TRIGGER agreements_insert AFTER INSERT ON agreements
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
END;

CREATE TRIGGER agreements_update AFTER UPDATE ON agreements
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE TRIGGER agreements_delete AFTER DELETE ON agreements
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE TRIGGER owners_insert AFTER INSERT ON owners
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
END;

CREATE TRIGGER owners_update AFTER UPDATE ON owners
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE TRIGGER owners_delete AFTER DELETE ON owners
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE TRIGGER screening_reviews_insert AFTER INSERT ON screening_reviews
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
END;

CREATE TRIGGER screening_reviews_update AFTER UPDATE ON screening_reviews
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, NEW.entity_id FROM state;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE TRIGGER screening_reviews_delete AFTER DELETE ON screening_reviews
  WHEN (SELECT bulk FROM state) = 0
BEGIN
  UPDATE state SET revision = revision + 1;
  INSERT OR IGNORE INTO changes (revision, entity_id) SELECT revision, OLD.entity_id FROM state;
END;

CREATE VIEW entity_documents AS
SELECT e.id, e.name, e.headquarters, e.parent, e.denied, e.denied_reason, e.aliases, e.ownership,
  (SELECT json_group_array(json_array(a.id, a.type, a.status, a.valid_from, a.valid_until,
                                      json(a.model_tiers), json(a.countries)))
     FROM (SELECT * FROM agreements WHERE entity_id = e.id ORDER BY position, id) a) AS agreements,
  (SELECT json_group_array(json_array(o.owner_entity, o.name, o.country, o.share))
     FROM (SELECT * FROM owners WHERE entity_id = e.id ORDER BY position) o) AS owners,
  (SELECT json_group_array(json_array(r.entry, r.decision, r.reviewer, r.at, r.why, r.name))
     FROM (SELECT * FROM screening_reviews WHERE entity_id = e.id ORDER BY position) r)
    AS screening_reviews
FROM entities e;
