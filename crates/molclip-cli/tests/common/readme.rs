//! The README's shell examples, as a user would type them: read by the tests that hold the
//! README to its word (every `molclip` command parses; the `train` section runs as written).

/// A fenced `bash` block of the README.
pub struct Block {
    /// The `#`-heading above it.
    pub heading: String,
    /// Its commands: the README line each begins on, and its words (continuations joined,
    /// comments dropped, `&&` and `;` ending a command).
    pub commands: Vec<(usize, Vec<String>)>,
}

/// The README beside the workspace.
pub fn readme() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md");
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every fenced `bash` block of `readme`, in order.
pub fn bash_blocks(readme: &str) -> Vec<Block> {
    let (mut blocks, mut heading, mut open) = (Vec::new(), String::new(), None::<Block>);
    let mut pending: Option<(usize, String)> = None;
    for (i, line) in readme.lines().enumerate() {
        let number = i + 1;
        match open.as_mut() {
            None if line.starts_with('#') => heading = line.trim_start_matches('#').trim().to_string(),
            None if line.trim() == "```bash" => open = Some(Block { heading: heading.clone(), commands: Vec::new() }),
            None => {}
            Some(_) if line.trim() == "```" => {
                assert!(pending.is_none(), "README line {number}: a ```bash block ends inside a command");
                blocks.push(open.take().expect("a block is open"));
            }
            Some(block) => {
                let (start, mut text) = pending.take().unwrap_or((number, String::new()));
                text.push_str(line);
                if let Some(joined) = text.strip_suffix('\\') {
                    // A continuation.
                    pending = Some((start, format!("{joined} ")));
                } else if let Some(words) = shlex::split(&text) {
                    block.commands.extend(commands(words).into_iter().map(|c| (start, c)));
                } else {
                    // A quoted string goes on to the next line.
                    pending = Some((start, text + "\n"));
                }
            }
        }
    }
    assert!(open.is_none(), "the README ends inside a ```bash block");
    blocks
}

/// One shell line's commands, from its words.
fn commands(words: Vec<String>) -> Vec<Vec<String>> {
    let mut out = vec![Vec::new()];
    for word in words {
        let (word, ends) = match word.strip_suffix(';') {
            Some(w) => (w.to_string(), true),
            None if word == "&&" || word == "||" || word == "|" => (String::new(), true),
            None => (word, false),
        };
        if !word.is_empty() {
            out.last_mut().expect("one command at least").push(word);
        }
        if ends {
            out.push(Vec::new());
        }
    }
    out.retain(|c| !c.is_empty());
    out
}

/// `molclip`'s arguments in a command: `molclip ARGS` (after any `NAME=value` environment),
/// or `cargo run ... -- ARGS`; `None` for other programs.
pub fn molclip_args(words: &[String]) -> Option<Vec<String>> {
    let program = words.iter().position(|w| !is_assignment(w))?;
    let words = &words[program..];
    match words.first().map(String::as_str) {
        Some("molclip") => Some(words[1..].to_vec()),
        Some("cargo") if words.get(1).map(String::as_str) == Some("run") => {
            let dashes = words.iter().position(|w| w == "--")?;
            Some(words[dashes + 1..].to_vec())
        }
        _ => None,
    }
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
    })
}
