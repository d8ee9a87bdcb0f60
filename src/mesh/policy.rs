//! Which nodes of a peer host may talk to which local nodes: glob patterns
//! on node names (the part before `@`), from the peer's config entry.

/// A node-name pattern: `*` matches any run of characters, `?` one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern(String);

impl Pattern {
    /// A pattern; every string is a valid one.
    pub fn new(p: &str) -> Pattern {
        Pattern(p.to_owned())
    }

    /// Whether `name` matches.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.0.as_bytes(), name.as_bytes())
    }
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative matcher with one backtrack point: linear in practice and
    // free of the exponential blow-up of naive recursion.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// What one peer host's nodes may do here. The default allows everything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// The peer's nodes that may take part (dial in, or be dialled).
    pub nodes: Vec<Pattern>,
    /// The local nodes that peer may reach and be reached from.
    pub local_nodes: Vec<Pattern>,
    /// What its nodes may ask of local nodes (the distribution firewall);
    /// None: anything, and the tunnel's bytes are not parsed.
    pub dist: Option<std::sync::Arc<crate::firewall::DistPolicy>>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            nodes: vec![Pattern::new("*")],
            local_nodes: vec![Pattern::new("*")],
            dist: None,
        }
    }
}

impl Policy {
    /// Whether the peer's node `name` may take part.
    pub fn allows_remote(&self, name: &str) -> bool {
        self.nodes.iter().any(|p| p.matches(name))
    }
    /// Whether the local node `name` may be reached by, or reach, the peer.
    pub fn allows_local(&self, name: &str) -> bool {
        self.local_nodes.iter().any(|p| p.matches(name))
    }
}

/// The part of a full node name before `@`.
pub fn short(node: &str) -> &str {
    node.split_once('@').map(|(n, _)| n).unwrap_or(node)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(Pattern::new("*").matches("anything"));
        assert!(Pattern::new("rabbit").matches("rabbit"));
        assert!(!Pattern::new("rabbit").matches("rabbit2"));
        assert!(Pattern::new("web*").matches("web-1"));
        assert!(Pattern::new("remsh*-a").matches("remsh1234-a"));
        assert!(Pattern::new("n?").matches("n1"));
        assert!(!Pattern::new("n?").matches("n12"));
        assert!(!Pattern::new("a*b*c").matches(&"a".repeat(200)));
    }

    #[test]
    fn default_allows_all() {
        let p = Policy::default();
        assert!(p.allows_remote("x") && p.allows_local("y"));
        let p = Policy {
            nodes: vec![Pattern::new("app*")],
            local_nodes: vec![Pattern::new("db")],
            dist: None,
        };
        assert!(p.allows_remote("app1") && !p.allows_remote("evil"));
        assert!(p.allows_local("db") && !p.allows_local("other"));
        assert_eq!(short("a@hosta"), "a");
    }
}
