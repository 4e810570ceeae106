-- Every listing query walks one index newest first, ties broken by id, so a page costs the same
-- however many sagas are stored: all sagas, one customer's, those in one status, or one
-- customer's in one status.
DROP INDEX sagas_by_customer;
DROP INDEX sagas_by_created;
CREATE INDEX sagas_by_customer ON sagas (customer_id, created_at, saga_id);
CREATE INDEX sagas_by_created ON sagas (created_at, saga_id);
CREATE INDEX sagas_by_status ON sagas (status, created_at, saga_id);
CREATE INDEX sagas_by_customer_status ON sagas (customer_id, status, created_at, saga_id);
