-- A store written by exchange at commit 6a6adb3 (the last schema without migrations), SQLite.
-- Made by tests/data/store/fill_store.py run on that commit's code, then: sqlite3 store.db .dump
PRAGMA foreign_keys=OFF;
BEGIN TRANSACTION;
CREATE TABLE messages (
	message_id VARCHAR(64) NOT NULL, 
	direction VARCHAR(3) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	operation VARCHAR(16) NOT NULL, 
	sender VARCHAR(32) NOT NULL, 
	recipients TEXT NOT NULL, 
	created_at DATETIME NOT NULL, 
	stored_at DATETIME NOT NULL, 
	envelope_xml BLOB NOT NULL, 
	digest VARCHAR(64) NOT NULL, 
	priority SMALLINT NOT NULL, 
	subject TEXT NOT NULL, 
	relates_to VARCHAR(64), 
	correlation_id VARCHAR(128) NOT NULL, 
	document_id VARCHAR(256) NOT NULL, 
	CONSTRAINT pk_messages PRIMARY KEY (message_id, direction)
);
INSERT INTO messages VALUES('m-out-1','out','document','new','000.00.00.G01','["000.00.00.H01","000.00.00.H02"]','2026-11-30 08:00:00.000000','2026-12-01 20:26:10.976349',X'3c656e76656c6f70652069643d276d2d6f75742d31273e43c3b46e672076c4836e2073e1bb912031323c2f656e76656c6f70653e','5d3af5ff80a99cabe96fe311ad9cf6168c032590cfd091da6d40897c6fbe3c9c',2,'Công văn số 12',NULL,'corr-1','12/CV-UBND');
INSERT INTO messages VALUES('m-in-1','in','document','new','000.00.00.H02','["000.00.00.G01"]','2026-11-30 08:00:00.000000','2026-12-01 20:26:11.264011',X'3c656e76656c6f70652069643d276d2d696e2d31273e42c3a16f2063c3a16f3c2f656e76656c6f70653e','9bdd14b4eba138fff3961115c19a14a52996c1ea91cb0498cd86c00db7875532',2,'Báo cáo',NULL,'corr-1','12/CV-UBND');
CREATE TABLE attachments (
	sha256 VARCHAR(64) NOT NULL, 
	size BIGINT NOT NULL, 
	data BLOB NOT NULL, 
	stored_at DATETIME NOT NULL, 
	PRIMARY KEY (sha256)
);
INSERT INTO attachments VALUES('d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580',25,X'255044462d312e37206f6c64206174746163686d656e7400ff','2026-12-01 20:26:10.976349');
CREATE TABLE deliveries (
	message_id VARCHAR(64) NOT NULL, 
	recipient VARCHAR(32) NOT NULL, 
	state VARCHAR(16) NOT NULL, 
	status_code VARCHAR(4), 
	reason TEXT NOT NULL, 
	updated_at DATETIME NOT NULL, 
	CONSTRAINT pk_deliveries PRIMARY KEY (message_id, recipient)
);
INSERT INTO deliveries VALUES('m-out-1','000.00.00.H01','delivered','03','','2026-11-30 08:00:09.000000');
INSERT INTO deliveries VALUES('m-out-1','000.00.00.H02','submitted',NULL,'','2026-12-01 20:26:10.976349');
CREATE TABLE outbox (
	id INTEGER NOT NULL, 
	message_id VARCHAR(64) NOT NULL, 
	recipient VARCHAR(32) NOT NULL, 
	routing_key VARCHAR(128) NOT NULL, 
	headers TEXT NOT NULL, 
	priority SMALLINT NOT NULL, 
	created_at DATETIME NOT NULL, 
	lease_until FLOAT, 
	attempts INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
INSERT INTO outbox VALUES(2,'m-out-1','000.00.00.H02','000.00.00.H02.normal','{"x-lane":"normal"}',2,'2026-12-01 20:26:10.976349',NULL,0);
CREATE TABLE outbox_frames (
	message_id VARCHAR(64) NOT NULL, 
	body BLOB NOT NULL, 
	PRIMARY KEY (message_id)
);
INSERT INTO outbox_frames VALUES('m-out-1',X'6672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d31');
CREATE TABLE inbox (
	agency VARCHAR(32) NOT NULL, 
	message_id VARCHAR(64) NOT NULL, 
	seq BIGINT, 
	state VARCHAR(16) NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	sender VARCHAR(32) NOT NULL, 
	subject TEXT NOT NULL, 
	priority SMALLINT NOT NULL, 
	received_at DATETIME NOT NULL, 
	handed_at DATETIME, 
	acked_at DATETIME, 
	reason TEXT NOT NULL, 
	CONSTRAINT pk_inbox PRIMARY KEY (agency, message_id), 
	UNIQUE (seq)
);
INSERT INTO inbox VALUES('000.00.00.G01','m-in-1',6,'handed_over','document','000.00.00.H02','Báo cáo',2,'2026-12-01 20:26:11.264011','2026-12-01 20:26:11.296207',NULL,'');
CREATE TABLE idempotency (
	sender VARCHAR(32) NOT NULL, 
	"key" VARCHAR(200) NOT NULL, 
	message_id VARCHAR(64) NOT NULL, 
	created_at DATETIME NOT NULL, 
	CONSTRAINT pk_idempotency PRIMARY KEY (sender, "key")
);
INSERT INTO idempotency VALUES('000.00.00.G01','idem-1','m-out-1','2026-12-01 20:26:10.956364');
CREATE TABLE api_tokens (
	token_hash VARCHAR(128) NOT NULL, 
	agency VARCHAR(32) NOT NULL, 
	label VARCHAR(200) NOT NULL, 
	created_at DATETIME NOT NULL, 
	PRIMARY KEY (token_hash)
);
INSERT INTO api_tokens VALUES('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff','000.00.00.G01','E-Office of G01','2026-12-01 20:26:11.329222');
CREATE TABLE journal (
	seq BIGINT NOT NULL, 
	at VARCHAR(32) NOT NULL, 
	event TEXT NOT NULL, 
	prev_hash VARCHAR(64) NOT NULL, 
	hash VARCHAR(64) NOT NULL, 
	PRIMARY KEY (seq)
);
INSERT INTO journal VALUES(1,'2026-12-01T20:26:11.062799Z','{"action":"accept_outgoing","at":"2026-12-01T20:26:11.062799Z","data":{"attachments":["d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580"],"digest":"5d3af5ff80a99cabe96fe311ad9cf6168c032590cfd091da6d40897c6fbe3c9c","kind":"document","operation":"new","outbox":["000.00.00.H01","000.00.00.H02"],"recipients":["000.00.00.H01","000.00.00.H02"],"relates_to":null,"sender":"000.00.00.G01","tracked":true},"message_id":"m-out-1","recipient":null,"seq":1}','0000000000000000000000000000000000000000000000000000000000000000','9a420d1e83b526307689014e793bfb5a06ab5cbe9aacc222cfa27da2a045fdf9');
INSERT INTO journal VALUES(2,'2026-12-01T20:26:11.180251Z','{"action":"published","at":"2026-12-01T20:26:11.180251Z","data":{"state":"queued"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":2}','9a420d1e83b526307689014e793bfb5a06ab5cbe9aacc222cfa27da2a045fdf9','e368d763d89ee9b65bcdfe89f32a9db37a3f8aea7b674245d051b13ca2a657a0');
INSERT INTO journal VALUES(3,'2026-12-01T20:26:11.217131Z','{"action":"record_event","at":"2026-12-01T20:26:11.217131Z","data":{"event":"delivered","event_at":"2026-11-30T08:00:05+00:00","state":"delivered"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":3}','e368d763d89ee9b65bcdfe89f32a9db37a3f8aea7b674245d051b13ca2a657a0','2f486934bc0685a6be47890494ea561e4f5e42d46f0245467178fa6cc81a2795');
INSERT INTO journal VALUES(4,'2026-12-01T20:26:11.246664Z','{"action":"record_event","at":"2026-12-01T20:26:11.246664Z","data":{"event":"status:03","event_at":"2026-11-30T08:00:09+00:00","status_code":"03"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":4}','2f486934bc0685a6be47890494ea561e4f5e42d46f0245467178fa6cc81a2795','5431df964e68af63578e5b819d779c7646648f1c40c2e648a5b88920c45b1a2b');
INSERT INTO journal VALUES(5,'2026-12-01T20:26:11.279186Z','{"action":"accept_incoming","at":"2026-12-01T20:26:11.279186Z","data":{"attachments":["d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580"],"digest":"9bdd14b4eba138fff3961115c19a14a52996c1ea91cb0498cd86c00db7875532","kind":"document","operation":"new","relates_to":null,"sender":"000.00.00.H02"},"message_id":"m-in-1","recipient":"000.00.00.G01","seq":5}','5431df964e68af63578e5b819d779c7646648f1c40c2e648a5b88920c45b1a2b','3e64bfaae791d6929a762b50bd750d9f78608e6b2c844033d5fa2a4df3ed6f09');
INSERT INTO journal VALUES(6,'2026-12-01T20:26:11.298465Z','{"action":"complete_incoming","at":"2026-12-01T20:26:11.298465Z","data":{"state":"handed_over"},"message_id":"m-in-1","recipient":"000.00.00.G01","seq":6}','3e64bfaae791d6929a762b50bd750d9f78608e6b2c844033d5fa2a4df3ed6f09','2b528d4584dd69e2f94e0db684bbfdb1d9941acfe09bb3c054043d3144d642e7');
INSERT INTO journal VALUES(7,'2026-12-01T20:26:11.330377Z','{"action":"put_token","at":"2026-12-01T20:26:11.330377Z","data":{"label":"E-Office of G01"},"message_id":null,"recipient":"000.00.00.G01","seq":7}','2b528d4584dd69e2f94e0db684bbfdb1d9941acfe09bb3c054043d3144d642e7','dd65d993eeb63734368dc3ebfef63af23b82c45ef4ab27ebb5f9e3a6da02d8e6');
CREATE TABLE timeline (
	id INTEGER NOT NULL, 
	message_id VARCHAR(64) NOT NULL, 
	recipient VARCHAR(32) NOT NULL, 
	event VARCHAR(64) NOT NULL, 
	at DATETIME NOT NULL, 
	status_code VARCHAR(4), 
	detail TEXT NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT fk_timeline_delivery FOREIGN KEY(message_id, recipient) REFERENCES deliveries (message_id, recipient)
);
INSERT INTO timeline VALUES(1,'m-out-1','000.00.00.H01','submitted','2026-12-01 20:26:10.976349',NULL,'');
INSERT INTO timeline VALUES(2,'m-out-1','000.00.00.H02','submitted','2026-12-01 20:26:10.976349',NULL,'');
INSERT INTO timeline VALUES(3,'m-out-1','000.00.00.H01','queued','2026-12-01 20:26:11.149638',NULL,'');
INSERT INTO timeline VALUES(4,'m-out-1','000.00.00.H01','delivered','2026-11-30 08:00:05.000000',NULL,'receipt r-1');
INSERT INTO timeline VALUES(5,'m-out-1','000.00.00.H01','status:03','2026-11-30 08:00:09.000000','03','Đã phân công');
CREATE INDEX ix_messages_sent ON messages (sender, direction, created_at);
CREATE INDEX ix_messages_document_id ON messages (document_id, direction);
CREATE INDEX ix_deliveries_state ON deliveries (state);
CREATE INDEX ix_outbox_message ON outbox (message_id);
CREATE INDEX ix_outbox_claim ON outbox (priority, id);
CREATE INDEX ix_inbox_agency_seq ON inbox (agency, seq);
CREATE INDEX ix_timeline_message ON timeline (message_id, at);
COMMIT;
