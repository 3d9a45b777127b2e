//! "Did you mean …?" for unknown keys.

/// Adds the nearest valid key to serde's "unknown field `x`, expected one of `a`, `b`".
pub fn explain(message: &str) -> String {
    let message = message.trim();
    let Some(rest) = message.strip_prefix("unknown field `") else {
        return message.to_string();
    };
    let Some((unknown, rest)) = rest.split_once('`') else {
        return message.to_string();
    };
    let candidates: Vec<&str> = rest.split('`').skip(1).step_by(2).collect();
    match nearest(unknown, &candidates) {
        Some(best) => format!(
            "unknown key `{unknown}`: did you mean `{best}`? (valid keys: {})",
            candidates.join(", ")
        ),
        None => format!(
            "unknown key `{unknown}` (valid keys: {})",
            candidates.join(", ")
        ),
    }
}

/// The candidate with the smallest edit distance, if it is close enough to be a typo.
pub fn nearest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| {
            (
                edit_distance(&word.to_ascii_lowercase(), &c.to_ascii_lowercase()),
                *c,
            )
        })
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut previous = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous + usize::from(ca != *cb);
            previous = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(previous + 1);
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_key() {
        assert_eq!(
            nearest("timeout_sec", &["id", "timeout_secs", "data_dir"]),
            Some("timeout_secs")
        );
        assert_eq!(
            nearest("concurency", &["concurrency", "id"]),
            Some("concurrency")
        );
        assert_eq!(nearest("zzz", &["concurrency", "id"]), None);
    }

    #[test]
    fn serde_message_is_rewritten() {
        let text = explain("unknown field `concurency`, expected one of `id`, `concurrency`");
        assert_eq!(
            text,
            "unknown key `concurency`: did you mean `concurrency`? (valid keys: id, concurrency)"
        );
        assert_eq!(explain("invalid type: string"), "invalid type: string");
    }
}
