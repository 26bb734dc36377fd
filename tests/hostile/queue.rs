//! Hostile cases for the queue and job lookups: fairness between tenants,
//! foreign and missing jobs alike.
