//! The broker's top-level modules import each other without a circle:
//! no module imports one that imports it back, directly or through
//! others. Read from the `crate::` and `super::` paths of the sources
//! (test code excluded), at the level of `broker/src/<module>`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Graph = BTreeMap<String, BTreeSet<String>>;

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read the source directory") {
        let path = entry.expect("a directory entry").path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The module path of a source file: `services/partitions/topics.rs` is
/// `["services", "partitions", "topics"]`, `audit/mod.rs` is `["audit"]`.
fn module_of(root: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(root).expect("under the source root");
    let mut parts: Vec<String> = rel
        .with_extension("")
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    parts
}

/// The `crate::a::b` and `super::x` paths named on `line`, as absolute
/// module paths (unresolved names included; only the first segment is
/// used).
fn paths_on(line: &str, here: &[String]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    for (start, keyword) in line
        .match_indices("crate::")
        .map(|(i, _)| (i, "crate::"))
        .chain(line.match_indices("super::").map(|(i, _)| (i, "super::")))
    {
        let before = line[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &line[start + keyword.len()..];
        let mut segments: Vec<String> = rest
            .split("::")
            .map(|s| {
                s.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|s| !s.is_empty())
            .collect();
        let mut base: Vec<String> = if keyword == "crate::" {
            Vec::new()
        } else {
            // `super` of `a/b.rs` and of `a/b/mod.rs` (module a::b) is `a`.
            here[..here.len().saturating_sub(1)].to_vec()
        };
        while segments.first().is_some_and(|s| s == "super") {
            segments.remove(0);
            base.pop();
        }
        base.extend(segments);
        found.push(base);
    }
    found
}

/// Edges between top-level modules of the sources under `root`.
fn graph(root: &Path) -> Graph {
    let mut files = Vec::new();
    sources(root, &mut files);
    let top: BTreeSet<String> = files
        .iter()
        .filter_map(|f| module_of(root, f).first().cloned())
        .filter(|m| m != "lib" && m != "main")
        .collect();
    let mut edges = Graph::new();
    for file in &files {
        let here = module_of(root, file);
        let Some(from) = here.first().cloned() else {
            continue;
        };
        if !top.contains(&from) || file.file_name().is_some_and(|n| n == "tests.rs") {
            continue;
        }
        let text = std::fs::read_to_string(file).expect("read a source file");
        for line in text.lines() {
            let line = line.trim();
            if line == "#[cfg(test)]" {
                break;
            }
            if line.starts_with("//") {
                continue;
            }
            for path in paths_on(line, &here) {
                if let Some(to) = path.first()
                    && to != &from
                    && top.contains(to)
                {
                    edges.entry(from.clone()).or_default().insert(to.clone());
                }
            }
        }
    }
    edges
}

/// Groups of two or more modules that reach each other (Tarjan).
fn circles(g: &Graph) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        next: usize,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).expect("visited");
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    self.out.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    let nodes: BTreeSet<&str> = g
        .iter()
        .flat_map(|(k, v)| std::iter::once(k.as_str()).chain(v.iter().map(String::as_str)))
        .collect();
    for v in nodes {
        if !walk.index.contains_key(v) {
            walk.visit(v);
        }
    }
    walk.out
}

#[test]
fn top_level_modules_import_no_circle() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = graph(&root);
    assert!(
        g.get("transport").is_some_and(|t| t.contains("services")),
        "the reader found no import of services by transport: it reads nothing"
    );
    let found = circles(&g);
    assert!(
        found.is_empty(),
        "modules that import each other: {found:?}\nedges: {g:#?}"
    );
}

#[test]
fn the_reader_and_the_circle_finder_see_a_circle() {
    let here = vec!["audit".to_owned(), "writer".to_owned()];
    let paths = paths_on(
        "use crate::services::BrokerState; use super::super::transport::x;",
        &here,
    );
    assert_eq!(paths[0][0], "services");
    assert_eq!(paths[1][0], "transport");
    let mut g = Graph::new();
    g.entry("audit".into())
        .or_default()
        .insert("services".into());
    g.entry("services".into())
        .or_default()
        .insert("transport".into());
    assert!(circles(&g).is_empty());
    g.entry("transport".into())
        .or_default()
        .insert("audit".into());
    assert_eq!(
        circles(&g),
        vec![BTreeSet::from([
            "audit".to_owned(),
            "services".to_owned(),
            "transport".to_owned()
        ])]
    );
}
