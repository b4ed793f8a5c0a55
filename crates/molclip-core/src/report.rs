//! How an error reads to a person: the error and its causes on one line.

/// `error` and its causes, joined by `: `, each cause once: a cause whose text is already in
/// the line (a parent that quotes it) is not repeated.
pub fn error_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let line = cause.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("{message}")]
    struct E {
        message: String,
        #[source]
        source: Option<Box<E>>,
    }

    #[test]
    fn causes_are_joined_once() {
        let leaf = E { message: "disk full".into(), source: None };
        let quoting = E { message: "writing a: disk full".into(), source: Some(Box::new(leaf)) };
        let top = E { message: "saving the run".into(), source: Some(Box::new(quoting)) };
        assert_eq!(error_text(&top), "saving the run: writing a: disk full");
    }
}
