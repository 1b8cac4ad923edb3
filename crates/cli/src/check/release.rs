//! The names the chart gives a release's cluster-scoped objects, derived as
//! `charts/plexus/templates/_helpers.tpl` does (`plexus.clusterScopedName`,
//! `plexus.webhookConfiguration`). This is the one copy of that rule in Rust:
//! the chart tests render the chart with Helm and compare against it.

/// Helm's `trunc` in `plexus.clusterScopedName`.
pub const CLUSTER_SCOPED_NAME_MAX: usize = 200;

/// `<release>-<namespace>`, cut to [`CLUSTER_SCOPED_NAME_MAX`] bytes, without
/// one trailing `-` (Helm's `trimSuffix` removes one).
pub fn cluster_scoped_name(release: &str, namespace: &str) -> String {
    let mut name = format!("{release}-{namespace}");
    // Sprig cuts bytes; Kubernetes names are ASCII, and a cut inside a
    // character (only on a name the API server refuses anyway) moves back to its start.
    let mut end = name.len().min(CLUSTER_SCOPED_NAME_MAX);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name.truncate(end);
    if name.ends_with('-') {
        name.pop();
    }
    name
}

/// The release's MutatingWebhookConfiguration.
pub fn webhook_configuration(release: &str, namespace: &str) -> String {
    format!("{}-injector", cluster_scoped_name(release, namespace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HELPERS: &str = include_str!("../../../../charts/plexus/templates/_helpers.tpl");

    #[test]
    fn the_rule_is_the_chart_helpers() {
        let rule = format!(
            r#"{{{{ printf "%s-%s" .Release.Name .Release.Namespace | trunc {CLUSTER_SCOPED_NAME_MAX} | trimSuffix "-" }}}}"#
        );
        assert!(HELPERS.contains(&rule), "_helpers.tpl no longer has {rule}");
        assert!(
            HELPERS.contains(r#"{{ include "plexus.clusterScopedName" . }}-injector"#),
            "_helpers.tpl names the webhook configuration differently"
        );
    }

    #[test]
    fn names_are_release_then_namespace_cut_to_the_limit() {
        assert_eq!(
            webhook_configuration("plexus", "plexus"),
            "plexus-plexus-injector"
        );
        assert_eq!(cluster_scoped_name("mesh", "team-a"), "mesh-team-a");
        // The cut lands right after the joining `-`, which is trimmed.
        let release = "r".repeat(CLUSTER_SCOPED_NAME_MAX - 1);
        assert_eq!(cluster_scoped_name(&release, "ns"), release);
        let long = "n".repeat(300);
        assert_eq!(
            cluster_scoped_name("plexus", &long).len(),
            CLUSTER_SCOPED_NAME_MAX
        );
        // Only one `-` goes, as with Helm's trimSuffix.
        let dashes = format!("{}--", "r".repeat(CLUSTER_SCOPED_NAME_MAX - 2));
        assert_eq!(
            cluster_scoped_name(&dashes, "ns"),
            format!("{}-", "r".repeat(CLUSTER_SCOPED_NAME_MAX - 2))
        );
        // Never a panic on a cut inside a character.
        let wide = "é".repeat(CLUSTER_SCOPED_NAME_MAX);
        assert!(cluster_scoped_name(&wide, "ns").len() <= CLUSTER_SCOPED_NAME_MAX);
    }
}
