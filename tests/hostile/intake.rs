//! Hostile cases for create requests: control characters, strict JSON,
//! refused creates that must store nothing.
