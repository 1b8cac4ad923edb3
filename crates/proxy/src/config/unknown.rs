//! Set `PLEXUS_*` variables the proxy does not read: typos, most likely,
//! so each comes with the known name it is nearest to.

use super::VARIABLES;
use super::env::Env;

/// A set `PLEXUS_*` variable that is not in [`VARIABLES`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownVariable {
    pub name: String,
    /// The known variable a typo most likely meant, if one is near enough.
    pub nearest: Option<&'static str>,
}

impl std::fmt::Display for UnknownVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is not a variable the proxy reads (ignored)",
            self.name
        )?;
        match self.nearest {
            Some(nearest) => write!(f, "; did you mean {nearest}?"),
            None => Ok(()),
        }
    }
}

/// Set `PLEXUS_*` variables not in [`VARIABLES`], sorted by name.
pub(super) fn unknown_variables(env: &dyn Env) -> Vec<UnknownVariable> {
    let mut unknown: Vec<UnknownVariable> = env
        .names()
        .into_iter()
        .filter(|name| name.starts_with("PLEXUS_") && !VARIABLES.contains(&name.as_str()))
        .map(|name| UnknownVariable {
            nearest: nearest(&name),
            name,
        })
        .collect();
    unknown.sort_unstable_by(|a, b| a.name.cmp(&b.name));
    unknown
}

/// The known variable closest to `name` by edit distance, when the distance
/// is small for the name's length (a slip, not another word); the first in
/// [`VARIABLES`] on a tie.
fn nearest(name: &str) -> Option<&'static str> {
    let typed = name.strip_prefix("PLEXUS_").unwrap_or(name);
    // Two edits at least (one transposed pair), a third of the name at most.
    let allowed = (typed.chars().count() / 3).max(2);
    VARIABLES
        .iter()
        .map(|known| {
            let known_part = known.strip_prefix("PLEXUS_").unwrap_or(known);
            (edit_distance(typed, known_part), *known)
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, known)| known)
}

/// Levenshtein distance (insertions, deletions, substitutions), case-insensitive:
/// `PLEXUS_log` is the same slip as `PLEXUS_LOF`.
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().map(|c| c.to_ascii_uppercase()).collect();
    let b: Vec<char> = b.chars().map(|c| c.to_ascii_uppercase()).collect();
    // One row of the table at a time: `row[j]` is the distance from a[..i] to b[..j].
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_insertions_deletions_and_substitutions() {
        assert_eq!(edit_distance("LOG", "LOG"), 0);
        assert_eq!(edit_distance("LOG", "log"), 0);
        assert_eq!(edit_distance("LOG", "LOGS"), 1);
        assert_eq!(edit_distance("STATIC_CONFIG", "STATIC_CONFG"), 1);
        assert_eq!(edit_distance("ENDPOINT", "ENDPIONT"), 2);
        assert_eq!(edit_distance("", "ABC"), 3);
        assert_eq!(edit_distance("KITTEN", "SITTING"), 3);
    }

    #[test]
    fn typos_get_the_nearest_known_name_and_other_words_none() {
        assert_eq!(
            nearest("PLEXUS_OTLP_ENDPIONT"),
            Some("PLEXUS_OTLP_ENDPOINT")
        );
        assert_eq!(
            nearest("PLEXUS_STATIC_CONFIGS"),
            Some("PLEXUS_STATIC_CONFIG")
        );
        assert_eq!(nearest("PLEXUS_LGO"), Some("PLEXUS_LOG"));
        assert_eq!(
            nearest("PLEXUS_drain_timeout_ms"),
            Some("PLEXUS_DRAIN_TIMEOUT_MS")
        );
        assert_eq!(nearest("PLEXUS_FEATURE_FLAGS"), None);
        assert_eq!(nearest("PLEXUS_X"), None);
    }

    #[test]
    fn the_warning_names_the_variable_and_the_suggestion() {
        let typo = UnknownVariable {
            name: "PLEXUS_LGO".into(),
            nearest: Some("PLEXUS_LOG"),
        };
        assert_eq!(
            typo.to_string(),
            "PLEXUS_LGO is not a variable the proxy reads (ignored); did you mean PLEXUS_LOG?"
        );
        let other = UnknownVariable {
            name: "PLEXUS_FEATURE_FLAGS".into(),
            nearest: None,
        };
        assert_eq!(
            other.to_string(),
            "PLEXUS_FEATURE_FLAGS is not a variable the proxy reads (ignored)"
        );
    }
}
