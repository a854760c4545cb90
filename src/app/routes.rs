//! The route table: one list that the router dispatches on and that names
//! each route's counters in `/metrics`, so the two cannot drift apart.

use crate::http::Method;

/// A route the application serves; `Other` is every unknown path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteId {
    Plaintext,
    Healthz,
    Echo,
    Orders,
    Export,
    Contacts,
    Metrics,
    Readyz,
    Other,
}

/// A route's paths, the methods it answers (for `Allow` on a 405), and its
/// label in `/metrics`.
pub struct Route {
    pub id: RouteId,
    pub paths: &'static [&'static str],
    pub methods: &'static [Method],
    pub allow: &'static [u8],
    pub label: &'static str,
}

const READ: &[Method] = &[Method::Get, Method::Head];
const READ_ALLOW: &[u8] = b"GET, HEAD";

/// Every route, in the order of `RouteId` (its index here).
pub const ROUTES: [Route; 9] = [
    Route {
        id: RouteId::Plaintext,
        paths: &["/plaintext"],
        methods: READ,
        allow: READ_ALLOW,
        label: "plaintext",
    },
    Route {
        id: RouteId::Healthz,
        paths: &["/healthz"],
        methods: READ,
        allow: READ_ALLOW,
        label: "healthz",
    },
    Route {
        id: RouteId::Echo,
        paths: &["/echo"],
        methods: &[Method::Post, Method::Put],
        allow: b"POST, PUT",
        label: "echo",
    },
    Route {
        id: RouteId::Orders,
        paths: &["/orders", "/orders.json"],
        methods: READ,
        allow: READ_ALLOW,
        label: "orders",
    },
    Route {
        id: RouteId::Export,
        paths: &["/orders/export.csv"],
        methods: READ,
        allow: READ_ALLOW,
        label: "export",
    },
    Route {
        id: RouteId::Contacts,
        paths: &["/contacts"],
        methods: &[Method::Post],
        allow: b"POST",
        label: "contacts",
    },
    Route {
        id: RouteId::Metrics,
        paths: &["/metrics"],
        methods: READ,
        allow: READ_ALLOW,
        label: "metrics",
    },
    Route {
        id: RouteId::Readyz,
        paths: &["/readyz"],
        methods: READ,
        allow: READ_ALLOW,
        label: "readyz",
    },
    Route {
        id: RouteId::Other,
        paths: &[],
        methods: &[],
        allow: b"",
        label: "other",
    },
];

/// The route serving `path` (`Other` when none does).
pub fn find(path: &[u8]) -> &'static Route {
    ROUTES
        .iter()
        .find(|r| r.paths.iter().any(|p| p.as_bytes() == path))
        .unwrap_or(&ROUTES[RouteId::Other as usize])
}

impl Route {
    pub fn index(&self) -> usize {
        self.id as usize
    }

    pub fn answers(&self, method: Method) -> bool {
        self.methods.contains(&method)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_the_order_of_its_ids() {
        for (i, r) in ROUTES.iter().enumerate() {
            assert_eq!(r.index(), i, "{}", r.label);
        }
        assert_eq!(find(b"/orders.json").id, RouteId::Orders);
        assert_eq!(find(b"/nope").id, RouteId::Other);
    }
}
