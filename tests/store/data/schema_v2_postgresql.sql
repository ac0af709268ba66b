-- The table layout of schema version 2, to test migrations from it.
CREATE TABLE hnas_campaigns (
	id SERIAL NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	config JSON NOT NULL, 
	seed BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	finished_at TIMESTAMP WITH TIME ZONE, 
	stop_requested BOOLEAN DEFAULT false NOT NULL, 
	lease_owner VARCHAR(255), 
	lease_expires_at TIMESTAMP WITH TIME ZONE, 
	CONSTRAINT pk_hnas_campaigns PRIMARY KEY (id), 
	CONSTRAINT ck_hnas_campaigns_status CHECK (status IN ('running', 'stopped', 'finished', 'failed')), 
	CONSTRAINT uq_hnas_campaigns_name UNIQUE (name)
);

CREATE INDEX ix_hnas_campaigns_created_at ON hnas_campaigns (created_at);

CREATE TABLE hnas_meta (
	key VARCHAR(64) NOT NULL, 
	value TEXT NOT NULL, 
	CONSTRAINT pk_hnas_meta PRIMARY KEY (key)
);

CREATE TABLE hnas_candidates (
	id SERIAL NOT NULL, 
	campaign_id INTEGER NOT NULL, 
	spec JSON NOT NULL, 
	spec_hash VARCHAR(64) NOT NULL, 
	generation INTEGER NOT NULL, 
	label TEXT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_hnas_candidates PRIMARY KEY (id), 
	CONSTRAINT uq_hnas_candidates_campaign_id_spec_hash UNIQUE (campaign_id, spec_hash), 
	CONSTRAINT fk_hnas_candidates_campaign_id_hnas_campaigns FOREIGN KEY(campaign_id) REFERENCES hnas_campaigns (id) ON DELETE CASCADE
);

CREATE TABLE hnas_evaluations (
	id SERIAL NOT NULL, 
	candidate_id INTEGER NOT NULL, 
	task VARCHAR(128) NOT NULL, 
	fidelity BIGINT NOT NULL, 
	seed BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	metrics JSON, 
	error TEXT, 
	host VARCHAR(255), 
	device VARCHAR(255), 
	wall_time_s FLOAT, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	started_at TIMESTAMP WITH TIME ZONE, 
	finished_at TIMESTAMP WITH TIME ZONE, 
	origin VARCHAR(16) DEFAULT 'search' NOT NULL, 
	CONSTRAINT pk_hnas_evaluations PRIMARY KEY (id), 
	CONSTRAINT uq_hnas_evaluations_candidate_id_task_fidelity_seed UNIQUE (candidate_id, task, fidelity, seed), 
	CONSTRAINT ck_hnas_evaluations_status CHECK (status IN ('queued', 'running', 'done', 'failed', 'invalid')), 
	CONSTRAINT ck_hnas_evaluations_origin CHECK (origin IN ('search', 'promotion', 'reseed')), 
	CONSTRAINT fk_hnas_evaluations_candidate_id_hnas_candidates FOREIGN KEY(candidate_id) REFERENCES hnas_candidates (id) ON DELETE CASCADE
);

CREATE INDEX ix_hnas_evaluations_status ON hnas_evaluations (status);

CREATE TABLE hnas_lineage (
	child_id INTEGER NOT NULL, 
	parent_id INTEGER NOT NULL, 
	operator VARCHAR(64) NOT NULL, 
	CONSTRAINT pk_hnas_lineage PRIMARY KEY (child_id, parent_id), 
	CONSTRAINT fk_hnas_lineage_child_id_hnas_candidates FOREIGN KEY(child_id) REFERENCES hnas_candidates (id) ON DELETE CASCADE, 
	CONSTRAINT fk_hnas_lineage_parent_id_hnas_candidates FOREIGN KEY(parent_id) REFERENCES hnas_candidates (id) ON DELETE CASCADE
);

CREATE INDEX ix_hnas_lineage_parent_id ON hnas_lineage (parent_id);

CREATE TABLE hnas_artifacts (
	id SERIAL NOT NULL, 
	candidate_id INTEGER NOT NULL, 
	evaluation_id INTEGER, 
	kind VARCHAR(64) NOT NULL, 
	path TEXT NOT NULL, 
	sha256 VARCHAR(64) NOT NULL, 
	bytes BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	CONSTRAINT pk_hnas_artifacts PRIMARY KEY (id), 
	CONSTRAINT uq_hnas_artifacts_evaluation_id_kind UNIQUE (evaluation_id, kind), 
	CONSTRAINT fk_hnas_artifacts_candidate_id_hnas_candidates FOREIGN KEY(candidate_id) REFERENCES hnas_candidates (id) ON DELETE CASCADE, 
	CONSTRAINT fk_hnas_artifacts_evaluation_id_hnas_evaluations FOREIGN KEY(evaluation_id) REFERENCES hnas_evaluations (id) ON DELETE CASCADE
);

CREATE INDEX ix_hnas_artifacts_candidate_id ON hnas_artifacts (candidate_id);

INSERT INTO hnas_meta (key, value) VALUES ('schema_version', '2');
