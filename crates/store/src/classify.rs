//! The one place where a database error is classified: transient (retry
//! later), refused data (never retry), or anything else (a bug).
//!
//! Every `?` on a `sqlx::Error` in the store goes through the `From` impl
//! below, so both backends and every caller see the same classes.

use sqlx::error::DatabaseError;

use crate::StoreError;

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        classify(e)
    }
}

/// Which class a database error belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Transient,
    Data,
    Other,
}

/// Maps a sqlx error into [`StoreError::Unavailable`],
/// [`StoreError::Data`] or [`StoreError::Database`].
pub(crate) fn classify(e: sqlx::Error) -> StoreError {
    let class = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::BeginFailed => Class::Transient,
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
            Class::Data
        }
        sqlx::Error::Database(db) => database_class(db.as_ref()),
        _ => Class::Other,
    };
    match class {
        Class::Transient => StoreError::Unavailable(e),
        Class::Data => StoreError::Data(e.to_string()),
        Class::Other => StoreError::Database(e),
    }
}

fn database_class(db: &dyn DatabaseError) -> Class {
    let Some(code) = db.code() else {
        return Class::Other;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        postgres_class(&code)
    } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        code.parse().map_or(Class::Other, sqlite_class)
    } else {
        Class::Other
    }
}

/// By SQLSTATE (Postgres appendix A).
fn postgres_class(sqlstate: &str) -> Class {
    match sqlstate {
        // Serialization failure and deadlock: the transaction lost a race.
        "40001" | "40P01" => Class::Transient,
        // Lock not available (NOWAIT), query canceled (statement_timeout).
        "55P03" | "57014" => Class::Transient,
        // Admin or crash shutdown, cannot connect now (server starting).
        "57P01" | "57P02" | "57P03" => Class::Transient,
        // Class 08 connection exception, 53 insufficient resources
        // (disk full, out of memory, too many connections).
        s if s.starts_with("08") || s.starts_with("53") => Class::Transient,
        // Class 22 data exception (bad encoding, NUL in text, value too
        // long, out of range), 23 integrity constraint violation.
        s if s.starts_with("22") || s.starts_with("23") => Class::Data,
        _ => Class::Other,
    }
}

/// By SQLite result code (the extended code; its low byte is the primary).
fn sqlite_class(code: i32) -> Class {
    const BUSY: i32 = 5;
    const LOCKED: i32 = 6;
    const NOMEM: i32 = 7;
    const IOERR: i32 = 10;
    const FULL: i32 = 13;
    const CANTOPEN: i32 = 14;
    const PROTOCOL: i32 = 15;
    const TOOBIG: i32 = 18;
    const CONSTRAINT: i32 = 19;
    const MISMATCH: i32 = 20;
    const RANGE: i32 = 25;
    match code & 0xff {
        BUSY | LOCKED | NOMEM | IOERR | FULL | CANTOPEN | PROTOCOL => Class::Transient,
        TOOBIG | CONSTRAINT | MISMATCH | RANGE => Class::Data,
        _ => Class::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sqlstates() {
        // 22P05 is "unsupported Unicode escape sequence" (a NUL in jsonb).
        for code in [
            "22P05", "22021", "22001", "22003", "22P02", "23505", "23502",
        ] {
            assert_eq!(postgres_class(code), Class::Data, "{code}");
        }
        for code in [
            "08006", "08001", "40001", "40P01", "57P01", "53300", "57014",
        ] {
            assert_eq!(postgres_class(code), Class::Transient, "{code}");
        }
        for code in ["42P01", "42601", "XX000"] {
            assert_eq!(postgres_class(code), Class::Other, "{code}");
        }
    }

    #[test]
    fn sqlite_codes() {
        // SQLITE_BUSY_SNAPSHOT (517), SQLITE_LOCKED_SHAREDCACHE (262).
        for code in [5, 517, 6, 262, 10] {
            assert_eq!(sqlite_class(code), Class::Transient, "{code}");
        }
        // SQLITE_CONSTRAINT_UNIQUE (2067), _NOTNULL (1299).
        for code in [19, 2067, 1299, 18, 20] {
            assert_eq!(sqlite_class(code), Class::Data, "{code}");
        }
        for code in [1, 11] {
            assert_eq!(sqlite_class(code), Class::Other, "{code}");
        }
    }

    #[test]
    fn driver_errors() {
        assert!(classify(sqlx::Error::PoolTimedOut).is_transient());
        assert!(classify(sqlx::Error::PoolClosed).is_transient());
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(classify(sqlx::Error::Io(io)).is_transient());
        assert!(matches!(
            classify(sqlx::Error::Decode("bad".into())),
            StoreError::Data(_)
        ));
        assert!(matches!(
            classify(sqlx::Error::RowNotFound),
            StoreError::Database(_)
        ));
    }
}
