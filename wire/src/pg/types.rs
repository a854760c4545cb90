//! Well-known type OIDs (from `pg_type.dat`; stable across server versions)
//! and the format codes used in Bind and RowDescription.

/// Result/parameter format code: text.
pub const TEXT_FORMAT: i16 = 0;
/// Result/parameter format code: binary.
pub const BINARY_FORMAT: i16 = 1;

pub const BOOL: u32 = 16;
pub const BYTEA: u32 = 17;
pub const CHAR: u32 = 18;
pub const NAME: u32 = 19;
pub const INT8: u32 = 20;
pub const INT2: u32 = 21;
pub const INT4: u32 = 23;
pub const TEXT: u32 = 25;
pub const OID: u32 = 26;
pub const JSON: u32 = 114;
pub const FLOAT4: u32 = 700;
pub const FLOAT8: u32 = 701;
pub const UNKNOWN: u32 = 705;
pub const BPCHAR: u32 = 1042;
pub const VARCHAR: u32 = 1043;
pub const DATE: u32 = 1082;
pub const TIME: u32 = 1083;
pub const TIMESTAMP: u32 = 1114;
pub const TIMESTAMPTZ: u32 = 1184;
pub const INTERVAL: u32 = 1186;
pub const NUMERIC: u32 = 1700;
pub const UUID: u32 = 2950;
pub const JSONB: u32 = 3802;

/// Microseconds from the Unix epoch to the PostgreSQL epoch (2000-01-01 UTC),
/// the origin of binary timestamps.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// The SQL name of a well-known type, for messages.
pub fn type_name(oid: u32) -> Option<&'static str> {
    Some(match oid {
        BOOL => "bool",
        BYTEA => "bytea",
        CHAR => "\"char\"",
        NAME => "name",
        INT8 => "int8",
        INT2 => "int2",
        INT4 => "int4",
        TEXT => "text",
        OID => "oid",
        JSON => "json",
        FLOAT4 => "float4",
        FLOAT8 => "float8",
        UNKNOWN => "unknown",
        BPCHAR => "bpchar",
        VARCHAR => "varchar",
        DATE => "date",
        TIME => "time",
        TIMESTAMP => "timestamp",
        TIMESTAMPTZ => "timestamptz",
        INTERVAL => "interval",
        NUMERIC => "numeric",
        UUID => "uuid",
        JSONB => "jsonb",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(type_name(INT8), Some("int8"));
        assert_eq!(type_name(TIMESTAMPTZ), Some("timestamptz"));
        assert_eq!(type_name(0), None);
    }

    #[test]
    fn epoch_offset() {
        // 30 years of 365 days plus 7 leap days.
        assert_eq!(PG_EPOCH_UNIX_MICROS, (30 * 365 + 7) * 86_400 * 1_000_000);
    }
}
