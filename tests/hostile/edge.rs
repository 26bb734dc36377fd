//! Hostile cases at the HTTP edge: metric labels, security headers,
//! problem bodies before routing, unauthenticated floods.
