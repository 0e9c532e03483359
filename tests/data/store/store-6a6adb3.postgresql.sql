-- A store written by exchange at commit 6a6adb3 (the last schema without migrations), PostgreSQL 15.
-- Made by tests/data/store/fill_store.py run on that commit's code, then:
-- pg_dump --inserts --no-owner --no-privileges --no-comments DB (psql's \\restrict lines removed)
--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: api_tokens; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.api_tokens (
    token_hash character varying(128) NOT NULL,
    agency character varying(32) NOT NULL,
    label character varying(200) NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: attachments; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.attachments (
    sha256 character varying(64) NOT NULL,
    size bigint NOT NULL,
    data bytea NOT NULL,
    stored_at timestamp with time zone NOT NULL
);


--
-- Name: deliveries; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.deliveries (
    message_id character varying(64) NOT NULL,
    recipient character varying(32) NOT NULL,
    state character varying(16) NOT NULL,
    status_code character varying(4),
    reason text NOT NULL,
    updated_at timestamp with time zone NOT NULL
);


--
-- Name: idempotency; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.idempotency (
    sender character varying(32) NOT NULL,
    key character varying(200) NOT NULL,
    message_id character varying(64) NOT NULL,
    created_at timestamp with time zone NOT NULL
);


--
-- Name: inbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.inbox (
    agency character varying(32) NOT NULL,
    message_id character varying(64) NOT NULL,
    seq bigint,
    state character varying(16) NOT NULL,
    kind character varying(16) NOT NULL,
    sender character varying(32) NOT NULL,
    subject text NOT NULL,
    priority smallint NOT NULL,
    received_at timestamp with time zone NOT NULL,
    handed_at timestamp with time zone,
    acked_at timestamp with time zone,
    reason text NOT NULL
);


--
-- Name: journal; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.journal (
    seq bigint NOT NULL,
    at character varying(32) NOT NULL,
    event text NOT NULL,
    prev_hash character varying(64) NOT NULL,
    hash character varying(64) NOT NULL
);


--
-- Name: messages; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.messages (
    message_id character varying(64) NOT NULL,
    direction character varying(3) NOT NULL,
    kind character varying(16) NOT NULL,
    operation character varying(16) NOT NULL,
    sender character varying(32) NOT NULL,
    recipients text NOT NULL,
    created_at timestamp with time zone NOT NULL,
    stored_at timestamp with time zone NOT NULL,
    envelope_xml bytea NOT NULL,
    digest character varying(64) NOT NULL,
    priority smallint NOT NULL,
    subject text NOT NULL,
    relates_to character varying(64),
    correlation_id character varying(128) NOT NULL,
    document_id character varying(256) NOT NULL
);


--
-- Name: outbox; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.outbox (
    id bigint NOT NULL,
    message_id character varying(64) NOT NULL,
    recipient character varying(32) NOT NULL,
    routing_key character varying(128) NOT NULL,
    headers text NOT NULL,
    priority smallint NOT NULL,
    created_at timestamp with time zone NOT NULL,
    lease_until double precision,
    attempts integer NOT NULL
);


--
-- Name: outbox_frames; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.outbox_frames (
    message_id character varying(64) NOT NULL,
    body bytea NOT NULL
);


--
-- Name: outbox_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.outbox_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: outbox_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.outbox_id_seq OWNED BY public.outbox.id;


--
-- Name: timeline; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.timeline (
    id bigint NOT NULL,
    message_id character varying(64) NOT NULL,
    recipient character varying(32) NOT NULL,
    event character varying(64) NOT NULL,
    at timestamp with time zone NOT NULL,
    status_code character varying(4),
    detail text NOT NULL
);


--
-- Name: timeline_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.timeline_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: timeline_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.timeline_id_seq OWNED BY public.timeline.id;


--
-- Name: outbox id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox ALTER COLUMN id SET DEFAULT nextval('public.outbox_id_seq'::regclass);


--
-- Name: timeline id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.timeline ALTER COLUMN id SET DEFAULT nextval('public.timeline_id_seq'::regclass);


--
-- Data for Name: api_tokens; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.api_tokens VALUES ('ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff', '000.00.00.G01', 'E-Office of G01', '2026-12-01 20:26:22.5514+00');


--
-- Data for Name: attachments; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.attachments VALUES ('d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580', 25, '\x255044462d312e37206f6c64206174746163686d656e7400ff', '2026-12-01 20:26:21.957002+00');


--
-- Data for Name: deliveries; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.deliveries VALUES ('m-out-1', '000.00.00.H02', 'submitted', NULL, '', '2026-12-01 20:26:21.957002+00');
INSERT INTO public.deliveries VALUES ('m-out-1', '000.00.00.H01', 'delivered', '03', '', '2026-11-30 08:00:09+00');


--
-- Data for Name: idempotency; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.idempotency VALUES ('000.00.00.G01', 'idem-1', 'm-out-1', '2026-12-01 20:26:21.940392+00');


--
-- Data for Name: inbox; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.inbox VALUES ('000.00.00.G01', 'm-in-1', 6, 'handed_over', 'document', '000.00.00.H02', 'Báo cáo', 2, '2026-12-01 20:26:22.444023+00', '2026-12-01 20:26:22.496051+00', NULL, '');


--
-- Data for Name: journal; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.journal VALUES (1, '2026-12-01T20:26:22.096449Z', '{"action":"accept_outgoing","at":"2026-12-01T20:26:22.096449Z","data":{"attachments":["d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580"],"digest":"5d3af5ff80a99cabe96fe311ad9cf6168c032590cfd091da6d40897c6fbe3c9c","kind":"document","operation":"new","outbox":["000.00.00.H01","000.00.00.H02"],"recipients":["000.00.00.H01","000.00.00.H02"],"relates_to":null,"sender":"000.00.00.G01","tracked":true},"message_id":"m-out-1","recipient":null,"seq":1}', '0000000000000000000000000000000000000000000000000000000000000000', 'bd0058aef9fcc51b1a6d7e4e8bf2e1c044a47cb2d21146fa62e2ea0d5b66f8ab');
INSERT INTO public.journal VALUES (2, '2026-12-01T20:26:22.279132Z', '{"action":"published","at":"2026-12-01T20:26:22.279132Z","data":{"state":"queued"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":2}', 'bd0058aef9fcc51b1a6d7e4e8bf2e1c044a47cb2d21146fa62e2ea0d5b66f8ab', '5e2688dd87b830392a8151ac902b0b98b16a27dd55cc74733d2fcdc450b484c4');
INSERT INTO public.journal VALUES (3, '2026-12-01T20:26:22.337448Z', '{"action":"record_event","at":"2026-12-01T20:26:22.337448Z","data":{"event":"delivered","event_at":"2026-11-30T08:00:05+00:00","state":"delivered"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":3}', '5e2688dd87b830392a8151ac902b0b98b16a27dd55cc74733d2fcdc450b484c4', '9fe8d5334088c123fa343ea0f332089c0c6a6fa0b16722e37a19265e0f8d0545');
INSERT INTO public.journal VALUES (4, '2026-12-01T20:26:22.423505Z', '{"action":"record_event","at":"2026-12-01T20:26:22.423505Z","data":{"event":"status:03","event_at":"2026-11-30T08:00:09+00:00","status_code":"03"},"message_id":"m-out-1","recipient":"000.00.00.H01","seq":4}', '9fe8d5334088c123fa343ea0f332089c0c6a6fa0b16722e37a19265e0f8d0545', '6c2c1fa23547210600d5a6ed4b348725559b35bca91a29f546c5c1b5f2afe746');
INSERT INTO public.journal VALUES (5, '2026-12-01T20:26:22.479365Z', '{"action":"accept_incoming","at":"2026-12-01T20:26:22.479365Z","data":{"attachments":["d32d45c852781b26fc0f97768cdc47fe17250d8460c7d77e286bd3c07fef3580"],"digest":"9bdd14b4eba138fff3961115c19a14a52996c1ea91cb0498cd86c00db7875532","kind":"document","operation":"new","relates_to":null,"sender":"000.00.00.H02"},"message_id":"m-in-1","recipient":"000.00.00.G01","seq":5}', '6c2c1fa23547210600d5a6ed4b348725559b35bca91a29f546c5c1b5f2afe746', '8d7dc83e9de68c4b1442023420336cc8c2eb0d39265eecc0cdd75330881add4e');
INSERT INTO public.journal VALUES (6, '2026-12-01T20:26:22.513355Z', '{"action":"complete_incoming","at":"2026-12-01T20:26:22.513355Z","data":{"state":"handed_over"},"message_id":"m-in-1","recipient":"000.00.00.G01","seq":6}', '8d7dc83e9de68c4b1442023420336cc8c2eb0d39265eecc0cdd75330881add4e', 'e0312fdd3bbb2dec7434ff61c0a54ce4ee1fdb00e81f772b716a08b9d299efa5');
INSERT INTO public.journal VALUES (7, '2026-12-01T20:26:22.568692Z', '{"action":"put_token","at":"2026-12-01T20:26:22.568692Z","data":{"label":"E-Office of G01"},"message_id":null,"recipient":"000.00.00.G01","seq":7}', 'e0312fdd3bbb2dec7434ff61c0a54ce4ee1fdb00e81f772b716a08b9d299efa5', '9e014b5492fe2f3189ffa94b9d606b892fccf98b886bfadfff2b021b67944dd4');


--
-- Data for Name: messages; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.messages VALUES ('m-out-1', 'out', 'document', 'new', '000.00.00.G01', '["000.00.00.H01","000.00.00.H02"]', '2026-11-30 08:00:00+00', '2026-12-01 20:26:21.957002+00', '\x3c656e76656c6f70652069643d276d2d6f75742d31273e43c3b46e672076c4836e2073e1bb912031323c2f656e76656c6f70653e', '5d3af5ff80a99cabe96fe311ad9cf6168c032590cfd091da6d40897c6fbe3c9c', 2, 'Công văn số 12', NULL, 'corr-1', '12/CV-UBND');
INSERT INTO public.messages VALUES ('m-in-1', 'in', 'document', 'new', '000.00.00.H02', '["000.00.00.G01"]', '2026-11-30 08:00:00+00', '2026-12-01 20:26:22.444023+00', '\x3c656e76656c6f70652069643d276d2d696e2d31273e42c3a16f2063c3a16f3c2f656e76656c6f70653e', '9bdd14b4eba138fff3961115c19a14a52996c1ea91cb0498cd86c00db7875532', 2, 'Báo cáo', NULL, 'corr-1', '12/CV-UBND');


--
-- Data for Name: outbox; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.outbox VALUES (2, 'm-out-1', '000.00.00.H02', '000.00.00.H02.normal', '{"x-lane":"normal"}', 2, '2026-12-01 20:26:21.957002+00', NULL, 0);


--
-- Data for Name: outbox_frames; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.outbox_frames VALUES ('m-out-1', '\x6672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d316672616d652d31');


--
-- Data for Name: timeline; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.timeline VALUES (1, 'm-out-1', '000.00.00.H01', 'submitted', '2026-12-01 20:26:21.957002+00', NULL, '');
INSERT INTO public.timeline VALUES (2, 'm-out-1', '000.00.00.H02', 'submitted', '2026-12-01 20:26:21.957002+00', NULL, '');
INSERT INTO public.timeline VALUES (3, 'm-out-1', '000.00.00.H01', 'queued', '2026-12-01 20:26:22.215334+00', NULL, '');
INSERT INTO public.timeline VALUES (4, 'm-out-1', '000.00.00.H01', 'delivered', '2026-11-30 08:00:05+00', NULL, 'receipt r-1');
INSERT INTO public.timeline VALUES (5, 'm-out-1', '000.00.00.H01', 'status:03', '2026-11-30 08:00:09+00', '03', 'Đã phân công');


--
-- Name: outbox_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.outbox_id_seq', 2, true);


--
-- Name: timeline_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.timeline_id_seq', 5, true);


--
-- Name: api_tokens api_tokens_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.api_tokens
    ADD CONSTRAINT api_tokens_pkey PRIMARY KEY (token_hash);


--
-- Name: attachments attachments_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.attachments
    ADD CONSTRAINT attachments_pkey PRIMARY KEY (sha256);


--
-- Name: inbox inbox_seq_key; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT inbox_seq_key UNIQUE (seq);


--
-- Name: journal journal_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.journal
    ADD CONSTRAINT journal_pkey PRIMARY KEY (seq);


--
-- Name: outbox_frames outbox_frames_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox_frames
    ADD CONSTRAINT outbox_frames_pkey PRIMARY KEY (message_id);


--
-- Name: outbox outbox_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.outbox
    ADD CONSTRAINT outbox_pkey PRIMARY KEY (id);


--
-- Name: deliveries pk_deliveries; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.deliveries
    ADD CONSTRAINT pk_deliveries PRIMARY KEY (message_id, recipient);


--
-- Name: idempotency pk_idempotency; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.idempotency
    ADD CONSTRAINT pk_idempotency PRIMARY KEY (sender, key);


--
-- Name: inbox pk_inbox; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.inbox
    ADD CONSTRAINT pk_inbox PRIMARY KEY (agency, message_id);


--
-- Name: messages pk_messages; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT pk_messages PRIMARY KEY (message_id, direction);


--
-- Name: timeline timeline_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.timeline
    ADD CONSTRAINT timeline_pkey PRIMARY KEY (id);


--
-- Name: ix_deliveries_state; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_deliveries_state ON public.deliveries USING btree (state);


--
-- Name: ix_inbox_agency_seq; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_inbox_agency_seq ON public.inbox USING btree (agency, seq);


--
-- Name: ix_messages_document_id; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_messages_document_id ON public.messages USING btree (document_id, direction);


--
-- Name: ix_messages_sent; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_messages_sent ON public.messages USING btree (sender, direction, created_at);


--
-- Name: ix_outbox_claim; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_outbox_claim ON public.outbox USING btree (priority, id);


--
-- Name: ix_outbox_message; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_outbox_message ON public.outbox USING btree (message_id);


--
-- Name: ix_timeline_message; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_timeline_message ON public.timeline USING btree (message_id, at);


--
-- Name: timeline fk_timeline_delivery; Type: FK CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.timeline
    ADD CONSTRAINT fk_timeline_delivery FOREIGN KEY (message_id, recipient) REFERENCES public.deliveries(message_id, recipient);


--
-- PostgreSQL database dump complete
--


