-- The W3C `traceparent` of the request that created a job (or of the trace
-- the API started for it): the worker continues that trace, so one trace
-- shows the request, the wait in the queue and every edit and critique.
ALTER TABLE jobs ADD COLUMN traceparent text;
