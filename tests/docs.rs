//! docs/ stays true to the code: every built-in event, guard and action is documented, and
//! every documented one exists.

use ecogate::lane::builtin::{EventName, ACTIONS, GUARDS};

#[test]
fn lanes_md_lists_every_builtin() {
    let doc = std::fs::read_to_string("docs/lanes.md").unwrap();
    for e in EventName::ALL {
        assert!(
            doc.contains(&format!("| `{}` |", e.name())),
            "docs/lanes.md lacks event `{}`",
            e.name()
        );
    }
    for b in GUARDS.iter().chain(ACTIONS) {
        assert!(
            doc.contains(&format!("`{}", b.name)),
            "docs/lanes.md lacks `{}`",
            b.name
        );
    }
    // and nothing documented that the engine does not know
    for line in doc.lines().filter(|l| l.starts_with("| `")) {
        let name = line[3..].split('`').next().unwrap_or("");
        let base = name.split('(').next().unwrap_or(name);
        let known = EventName::from_name(base).is_some()
            || GUARDS.iter().chain(ACTIONS).any(|b| b.name == base)
            || ["entry", "exit", "entry-weigh", "exit-weigh-cargo"].contains(&base);
        assert!(known, "docs/lanes.md documents unknown `{base}`");
    }
}
