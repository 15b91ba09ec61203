//! The operations an ACL rule covers, as a bit set.

/// A set of ACL operations, as a bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Operations(pub u16);

impl Operations {
    /// Append to a topic.
    pub const PUBLISH: Self = Self(1 << 0);
    /// Read a topic.
    pub const SUBSCRIBE: Self = Self(1 << 1);
    /// See a topic's configuration and state.
    pub const DESCRIBE: Self = Self(1 << 2);
    /// Create topics.
    pub const CREATE: Self = Self(1 << 3);
    /// Delete topics.
    pub const DELETE: Self = Self(1 << 4);
    /// Change a topic's settings, recipients and ACLs bound to it.
    pub const ALTER: Self = Self(1 << 5);
    /// Decide access requests for a topic and grant its permissions.
    pub const GRANT: Self = Self(1 << 6);
    /// Manage encryption keys.
    pub const KEYS: Self = Self(1 << 7);
    /// Read the audit trail.
    pub const AUDIT: Self = Self(1 << 8);
    /// Every operation, including broker-wide administration.
    pub const ADMIN: Self = Self(1 << 9);
    /// Bits that name an operation.
    pub const VALID: u16 = (1 << 10) - 1;

    /// Every operation with its name, in bit order.
    pub const NAMED: &'static [(Self, &'static str)] = &[
        (Self::PUBLISH, "publish"),
        (Self::SUBSCRIBE, "subscribe"),
        (Self::DESCRIBE, "describe"),
        (Self::CREATE, "create"),
        (Self::DELETE, "delete"),
        (Self::ALTER, "alter"),
        (Self::GRANT, "grant"),
        (Self::KEYS, "keys"),
        (Self::AUDIT, "audit"),
        (Self::ADMIN, "admin"),
    ];

    /// True when every operation of `other` is in `self`.
    pub fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// True when no operation is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The union of both sets.
    pub fn union(self, other: Self) -> Self {
        Self(self.0 | other.0)
    }

    /// The operation named `name` (`publish`, `subscribe`, ...).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::NAMED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(op, _)| *op)
    }

    /// The names of the operations in the set.
    pub fn names(self) -> Vec<&'static str> {
        Self::NAMED
            .iter()
            .filter(|(op, _)| self.contains(*op))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::fmt::Display for Operations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}
