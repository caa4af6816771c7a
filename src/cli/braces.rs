//! Brace expansion of image references, as a shell does it: `ubuntu:{latest,noble}` is two
//! references, braces nest (`a{b,c{d,e}}`) and multiply (`{a,b}{1,2}`). Only the comma
//! form: a brace pair without a comma at its own level, or without its match, stays as it
//! is. Never touches the filesystem or anything else: words in, words out.

/// The words `word` expands to, in the order a shell gives them.
pub fn expand(word: &str) -> Vec<String> {
    let bytes = word.as_bytes();
    let mut from = 0;
    while let Some(offset) = word[from..].find('{') {
        let open = from + offset;
        if let Some((close, commas)) = group(bytes, open) {
            if !commas.is_empty() {
                let (prefix, suffix) = (&word[..open], &word[close + 1..]);
                let mut starts = vec![open + 1];
                starts.extend(commas.iter().map(|c| c + 1));
                let mut ends = commas.clone();
                ends.push(close);
                let suffixes = expand(suffix);
                let mut out = Vec::new();
                for (s, e) in starts.into_iter().zip(ends) {
                    for alt in expand(&word[s..e]) {
                        for rest in &suffixes {
                            out.push(format!("{prefix}{alt}{rest}"));
                        }
                    }
                }
                return out;
            }
        }
        // Not a list here (`{x}`, or no closing brace): look for one further on, inside
        // it included, as a shell does with `{a{b,c}}`.
        from = open + 1;
    }
    vec![word.to_string()]
}

/// The `}` matching the `{` at `open`, and the commas at that pair's own level.
fn group(bytes: &[u8], open: usize) -> Option<(usize, Vec<usize>)> {
    let mut depth = 0usize;
    let mut commas = Vec::new();
    for (i, b) in bytes.iter().enumerate().skip(open) {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some((i, commas));
                }
            }
            b',' if depth == 1 => commas.push(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn a_list_gives_one_word_per_item() {
        assert_eq!(
            expand("ubuntu:{latest,noble}"),
            ["ubuntu:latest", "ubuntu:noble"]
        );
        assert_eq!(expand("a{,b}"), ["a", "ab"]);
        assert_eq!(expand("alpine:3"), ["alpine:3"]);
    }

    #[test]
    fn braces_nest_and_multiply_as_in_a_shell() {
        assert_eq!(expand("x{a,b{1,2}}y"), ["xay", "xb1y", "xb2y"]);
        assert_eq!(expand("{a,b}{1,2}"), ["a1", "a2", "b1", "b2"]);
        assert_eq!(
            expand("reg/{bb,alpine}:{1,2}"),
            ["reg/bb:1", "reg/bb:2", "reg/alpine:1", "reg/alpine:2"]
        );
    }

    #[test]
    fn braces_without_a_comma_or_a_match_stay() {
        assert_eq!(expand("{x}"), ["{x}"]);
        assert_eq!(expand("a{b,c"), ["a{b,c"]);
        assert_eq!(expand("{a{b,c}}"), ["{ab}", "{ac}"]);
        assert_eq!(expand("a}{b,c}"), ["a}b", "a}c"]);
    }
}
