//! Hostile cases for outbound requests on a client's behalf: the
//! special-purpose address ranges and environment proxies.
