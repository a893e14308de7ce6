//! `redactor`: masks personal data and secrets in record values. Stateless.
//!
//! Three maskers, applied in this order (each one can be switched off):
//!
//! - `email`: an e-mail address becomes `[email]`. The local part is made of
//!   `A-Z a-z 0-9 . _ % + -` (leading dots are not part of it); the domain is
//!   at least two dot-separated labels of `A-Z a-z 0-9 -`, the last of which
//!   (the top-level domain) is two or more letters. So `a@b` and `a@1.2.3.4`
//!   are not addresses; in `mail x@y.com.` the final dot is not masked.
//! - `bearer`: in `Bearer <token>` (the word matched case-insensitively, as a
//!   whole word, followed by spaces or tabs) the token becomes `[token]`; the
//!   word and the spacing are kept. Token characters are
//!   `A-Z a-z 0-9 . _ ~ + / = -` (and the JSON escape `\/`).
//! - `ipv4`: four dot-separated decimal octets of one to three digits, each
//!   at most 255, become `[ipv4]`, provided they are not part of a longer
//!   number or dotted run: not preceded by a letter, digit, `_` or `.`, not
//!   followed by a letter, digit or `_`, nor by a `.` and one of those. So
//!   `999.1.1.1`, `1.2.3.4.5`, `v1.2.3.4` and `1.2.3` are left alone, while
//!   `10.0.0.1:8080` and `from 10.0.0.1.` are masked.
//!
//! Configuration: empty (all three maskers) or a comma-separated list of
//! `email`, `ipv4`, `bearer` choosing which to apply.
//!
//! Output: one output per input record, with the input's key and headers and
//! the redacted value. A value that is not UTF-8 is rejected.
//!
//! Guarantees:
//! - outputs depend on each record alone (no state), so never on batches;
//! - redaction is idempotent: redacting an already redacted value changes
//!   nothing;
//! - JSON stays JSON: the replacements need no escaping and a match never
//!   starts or ends inside a JSON escape sequence (`\n`, `\u00e9`, ...), so
//!   a value that was valid JSON is still valid JSON, and text right after
//!   an escape such as `\n` is masked as if the escape were whitespace;
//! - the scan is hand-written, runs in time linear in the value's length and
//!   allocates only when something is masked.

use std::borrow::Cow;

use logstream_sdk::{Emitter, Output, Processor, Record, Reject};

/// Replacement for an e-mail address.
pub const EMAIL_MASK: &str = "[email]";
/// Replacement for an IPv4 address.
pub const IPV4_MASK: &str = "[ipv4]";
/// Replacement for a bearer token (the word `Bearer` is kept).
pub const TOKEN_MASK: &str = "[token]";

/// The processor: which maskers are switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Redactor {
    pub email: bool,
    pub ipv4: bool,
    pub bearer: bool,
}

impl Default for Redactor {
    /// All maskers on.
    fn default() -> Self {
        Redactor {
            email: true,
            ipv4: true,
            bearer: true,
        }
    }
}

impl Redactor {
    /// Redact `text` with the configured maskers; borrowed when nothing was
    /// masked.
    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        if self.email {
            if let Some(masked) = mask_emails(&text) {
                text = Cow::Owned(masked);
            }
        }
        if self.bearer {
            if let Some(masked) = mask_bearer_tokens(&text) {
                text = Cow::Owned(masked);
            }
        }
        if self.ipv4 {
            if let Some(masked) = mask_ipv4(&text) {
                text = Cow::Owned(masked);
            }
        }
        text
    }
}

impl Processor for Redactor {
    type State = ();

    fn configure(config: &str) -> Result<Self, String> {
        let config = config.trim();
        if config.is_empty() {
            return Ok(Redactor::default());
        }
        let mut redactor = Redactor {
            email: false,
            ipv4: false,
            bearer: false,
        };
        for name in config.split(',').map(str::trim) {
            match name {
                "email" => redactor.email = true,
                "ipv4" => redactor.ipv4 = true,
                "bearer" => redactor.bearer = true,
                "" => {
                    return Err(format!(
                        "the redactor configuration {config:?} has an empty entry in its comma list"
                    ))
                }
                other => {
                    return Err(format!(
                        "the redactor knows the maskers `email`, `ipv4` and `bearer`, not {other:?}"
                    ))
                }
            }
        }
        Ok(redactor)
    }

    fn process(&mut self, _: &mut (), record: &Record, out: &mut Emitter) -> Result<(), Reject> {
        let text = record
            .value_str()
            .ok_or_else(|| Reject::new("the value is not valid UTF-8 text"))?;
        let output = Output::copy_of(record);
        out.emit(match self.redact(text) {
            Cow::Borrowed(_) => output,
            Cow::Owned(masked) => output.with_value(masked),
        });
        Ok(())
    }
}

/// Builds the redacted text lazily: nothing is allocated until the first
/// replacement.
struct Rewriter<'a> {
    text: &'a str,
    out: Option<String>,
    /// `text[..copied]` has been handled (copied to `out` or replaced).
    copied: usize,
}

impl<'a> Rewriter<'a> {
    fn new(text: &'a str) -> Self {
        Rewriter {
            text,
            out: None,
            copied: 0,
        }
    }

    /// Replace `text[start..end]` (with `copied <= start <= end`, both on
    /// ASCII characters) by `mask`.
    fn replace(&mut self, start: usize, end: usize, mask: &str) {
        let out = self
            .out
            .get_or_insert_with(|| String::with_capacity(self.text.len()));
        out.push_str(&self.text[self.copied..start]);
        out.push_str(mask);
        self.copied = end;
    }

    fn finish(self) -> Option<String> {
        let mut out = self.out?;
        out.push_str(&self.text[self.copied..]);
        Some(out)
    }
}

/// Whether `b[..=k]` ends with an odd number of backslashes, i.e. the
/// backslash at `k` starts an escape sequence.
fn escaping_backslash_at(b: &[u8], k: usize) -> bool {
    let run = b[..=k].iter().rev().take_while(|&&c| c == b'\\').count();
    run % 2 == 1
}

/// Whether `b[..p]` ends with a letter-bearing JSON escape sequence: `\n`,
/// `\r`, `\t`, `\b`, `\f` or `\uXXXX`. Such a sequence stands for a character
/// that is not part of a word, so it counts as a word boundary.
fn ends_with_escape(b: &[u8], p: usize) -> bool {
    if p >= 2
        && b[p - 2] == b'\\'
        && matches!(b[p - 1], b'n' | b'r' | b't' | b'b' | b'f')
        && escaping_backslash_at(b, p - 2)
    {
        return true;
    }
    p >= 6
        && b[p - 6] == b'\\'
        && b[p - 5] == b'u'
        && b[p - 4..p].iter().all(u8::is_ascii_hexdigit)
        && escaping_backslash_at(b, p - 6)
}

fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_'
}

/// Whether the character before `p` belongs to a word (letter, digit, `_`,
/// or `.` too when `dot` is set), not counting the end of an escape sequence.
fn word_before(b: &[u8], p: usize, dot: bool) -> bool {
    if p == 0 {
        return false;
    }
    let c = b[p - 1];
    if dot && c == b'.' {
        return true;
    }
    is_word(c) && !ends_with_escape(b, p)
}

// ---------------------------------------------------------------- e-mail --

fn is_local(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'%' | b'+' | b'-')
}

fn is_label(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-'
}

/// The end of the longest domain starting at `start`: two or more labels
/// whose last label is two or more letters.
fn domain_end(b: &[u8], start: usize) -> Option<usize> {
    let mut best = None;
    let mut labels = 0;
    let mut j = start;
    loop {
        let label_start = j;
        while j < b.len() && is_label(b[j]) {
            j += 1;
        }
        if j == label_start {
            break;
        }
        labels += 1;
        let label = &b[label_start..j];
        if labels >= 2 && label.len() >= 2 && label.iter().all(u8::is_ascii_alphabetic) {
            best = Some(j);
        }
        if j < b.len() && b[j] == b'.' {
            j += 1;
        } else {
            break;
        }
    }
    best
}

/// The start of the local part ending at `at` (the `@`), not before `floor`.
fn local_start(b: &[u8], at: usize, floor: usize) -> Option<usize> {
    let mut s = at;
    while s > floor && is_local(b[s - 1]) {
        s -= 1;
    }
    // Do not swallow the letters of an escape sequence just before it.
    if s > 0 && b[s - 1] == b'\\' && escaping_backslash_at(b, s - 1) && s < at {
        if b[s] == b'u' && at - s >= 5 && b[s + 1..s + 5].iter().all(u8::is_ascii_hexdigit) {
            s += 5;
        } else {
            s += 1;
        }
    }
    while s < at && b[s] == b'.' {
        s += 1;
    }
    (s < at).then_some(s)
}

/// Mask every e-mail address; `None` when there is none.
pub fn mask_emails(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut w = Rewriter::new(text);
    let mut i = 0;
    while let Some(offset) = b[i..].iter().position(|&c| c == b'@') {
        let at = i + offset;
        i = at + 1;
        let Some(start) = local_start(b, at, w.copied) else {
            continue;
        };
        let Some(end) = domain_end(b, at + 1) else {
            continue;
        };
        w.replace(start, end, EMAIL_MASK);
        i = end;
    }
    w.finish()
}

// ---------------------------------------------------------------- bearer --

fn is_token(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-')
}

/// Mask the token after every `Bearer` word; `None` when there is none.
pub fn mask_bearer_tokens(text: &str) -> Option<String> {
    const WORD: &[u8] = b"bearer";
    let b = text.as_bytes();
    let mut w = Rewriter::new(text);
    let mut i = 0;
    while i + WORD.len() < b.len() {
        let Some(offset) = b[i..b.len() - WORD.len()]
            .iter()
            .position(|&c| c | 0x20 == b'b')
        else {
            break;
        };
        let start = i + offset;
        i = start + 1;
        let after_word = start + WORD.len();
        if !b[start..after_word].eq_ignore_ascii_case(WORD) || word_before(b, start, false) {
            continue;
        }
        let mut j = after_word;
        while j < b.len() && matches!(b[j], b' ' | b'\t') {
            j += 1;
        }
        if j == after_word {
            continue;
        }
        let token_start = j;
        loop {
            if j < b.len() && is_token(b[j]) {
                j += 1;
            } else if j + 1 < b.len() && b[j] == b'\\' && b[j + 1] == b'/' {
                j += 2;
            } else {
                break;
            }
        }
        if j == token_start {
            continue;
        }
        w.replace(token_start, j, TOKEN_MASK);
        i = j;
    }
    w.finish()
}

// ------------------------------------------------------------------ IPv4 --

/// Parse one octet (one to three digits, at most 255) at `j`; its end.
fn octet_end(b: &[u8], j: usize) -> Option<usize> {
    let digits = b[j..]
        .iter()
        .take(3)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 {
        return None;
    }
    let end = j + digits;
    if b.get(end).is_some_and(u8::is_ascii_digit) {
        return None; // four or more digits
    }
    let value = b[j..end]
        .iter()
        .fold(0u32, |v, &c| v * 10 + u32::from(c - b'0'));
    (value <= 255).then_some(end)
}

/// The end of an IPv4 address starting at `start`, boundaries included.
fn ipv4_end(b: &[u8], start: usize) -> Option<usize> {
    if word_before(b, start, true) {
        return None;
    }
    let mut j = octet_end(b, start)?;
    for _ in 0..3 {
        if b.get(j) != Some(&b'.') {
            return None;
        }
        j = octet_end(b, j + 1)?;
    }
    match b.get(j) {
        Some(&c) if is_word(c) => None,
        Some(b'.') if b.get(j + 1).is_some_and(|&c| is_word(c)) => None,
        _ => Some(j),
    }
}

/// Mask every IPv4 address; `None` when there is none.
pub fn mask_ipv4(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut w = Rewriter::new(text);
    let mut i = 0;
    while let Some(offset) = b[i..].iter().position(u8::is_ascii_digit) {
        let start = i + offset;
        match ipv4_end(b, start) {
            Some(end) => {
                w.replace(start, end, IPV4_MASK);
                i = end;
            }
            // Not `start + run length`: after an escape such as `\u0020`
            // an address can start in the middle of a run of digits.
            None => i = start + 1,
        }
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use logstream_sdk::OwnedRecord;
    use logstream_sdk::{BatchOutput, Header, Runtime, RuntimeError};
    use proptest::prelude::*;

    fn all(text: &str) -> String {
        Redactor::default().redact(text).into_owned()
    }

    #[track_caller]
    fn check(cases: &[(&str, &str)]) {
        for (input, expected) in cases {
            assert_eq!(&all(input), expected, "input {input:?}");
        }
    }

    #[test]
    fn emails() {
        check(&[
            ("mail bob@example.com now", "mail [email] now"),
            ("bob@example.com", "[email]"),
            ("<first.last+tag@mail.example.co.uk>", "<[email]>"),
            ("a_b%c-d@sub-domain.example.org", "[email]"),
            ("x@y.io, z@w.dev", "[email], [email]"),
            (
                "end of sentence: bob@example.com.",
                "end of sentence: [email].",
            ),
            ("..bob@example.com", "..[email]"),
            (
                "https://user:secret@host.example.com/path",
                "https://user:[email]/path",
            ),
            ("UPPER@EXAMPLE.COM", "[email]"),
            ("bob@example.com.123", "[email].123"),
            ("x@y@example.com", "x@[email]"),
            ("répondre à bob@example.com", "répondre à [email]"),
            ("bob@example.com\u{e9}", "[email]\u{e9}"),
        ]);
    }

    #[test]
    fn not_emails() {
        for text in [
            "a@b",
            "user@localhost",
            "@example.com",
            "bob@",
            "bob@.com",
            "bob@example.",
            "bob@example.c",
            "bob@example.c0m",
            "bob@1.2.3.4",
            "@@",
            "a@@b.com",
            "...@example.com",
            "ssh git@github:repo",
            "price 5@3.50",
        ] {
            let masked = Redactor {
                ipv4: false,
                ..Redactor::default()
            }
            .redact(text);
            assert_eq!(masked, text, "input {text:?}");
        }
        // With the IPv4 masker on, the address part is still masked.
        assert_eq!(all("bob@1.2.3.4"), "bob@[ipv4]");
    }

    #[test]
    fn ipv4() {
        check(&[
            ("1.2.3.4", "[ipv4]"),
            ("from 10.0.0.1 to 192.168.255.255", "from [ipv4] to [ipv4]"),
            ("0.0.0.0 255.255.255.255", "[ipv4] [ipv4]"),
            ("addr=10.0.0.1:8080", "addr=[ipv4]:8080"),
            ("connected from 10.0.0.1.", "connected from [ipv4]."),
            ("(127.0.0.1)", "([ipv4])"),
            ("[1.2.3.4]", "[[ipv4]]"),
            (
                "x-forwarded-for: 1.1.1.1, 8.8.8.8",
                "x-forwarded-for: [ipv4], [ipv4]",
            ),
            ("010.001.000.001", "[ipv4]"),
            ("-1.2.3.4", "-[ipv4]"),
            ("1.2.3.4..", "[ipv4].."),
            ("1.2.3.4 999.1.1.1 5.6.7.8", "[ipv4] 999.1.1.1 [ipv4]"),
        ]);
    }

    #[test]
    fn not_ipv4() {
        for text in [
            "999.1.1.1",
            "1.2.3.256",
            "1.2.3.4.5",
            "0.1.2.3.4",
            "v1.2.3",
            "v1.2.3.4",
            "1.2.3",
            "1.2.3.",
            "1.2..3.4",
            "1234.1.1.1",
            "1.1.1.1234",
            "11.2.3.4a",
            "a1.2.3.4",
            "_1.2.3.4",
            "1.2.3.4_",
            ".1.2.3.4",
            "1.2.3.4.com",
            "2024.01.02",
            "1.2.3.4e5",
            "12345",
        ] {
            assert_eq!(all(text), text, "input {text:?}");
        }
    }

    #[test]
    fn bearer_tokens() {
        check(&[
            (
                "Authorization: Bearer abc.def-ghi_jkl~mno+pq/rs==",
                "Authorization: Bearer [token]",
            ),
            (
                "authorization: bearer eyJhbGciOi.eyJzdWIi.SflKx",
                "authorization: bearer [token]",
            ),
            ("BEARER x", "BEARER [token]"),
            ("Bearer\tabc", "Bearer\t[token]"),
            ("Bearer   abc rest", "Bearer   [token] rest"),
            ("\"Bearer abc\"", "\"Bearer [token]\""),
            ("Bearer abc, Bearer def", "Bearer [token], Bearer [token]"),
            ("(Bearer abc)", "(Bearer [token])"),
            // A token that happens to look like an address is still a token.
            ("Bearer 1.2.3.4", "Bearer [token]"),
            ("Bearer bob@example.com", "Bearer [email]"),
        ]);
    }

    #[test]
    fn not_bearer_tokens() {
        for text in [
            "Bearer",
            "Bearer ",
            "Bearer: abc",
            "Bearerabc",
            "xBearer abc",
            "_bearer abc",
            "bearer\nabc",
            "Bearer [token]",
            "Bear abc",
            "Basic dXNlcjpwYXNz",
        ] {
            assert_eq!(all(text), text, "input {text:?}");
        }
    }

    #[test]
    fn json_escapes_are_word_boundaries_and_are_never_cut() {
        check(&[
            (
                r#"{"m":"line\nBearer abc"}"#,
                r#"{"m":"line\nBearer [token]"}"#,
            ),
            (r#"{"m":"from\t10.0.0.1"}"#, r#"{"m":"from\t[ipv4]"}"#),
            (r#"{"m":"to\nbob@example.com"}"#, r#"{"m":"to\n[email]"}"#),
            (
                r#"{"m":"to\u00e9bob@example.com"}"#,
                r#"{"m":"to\u00e9[email]"}"#,
            ),
            (r#"{"m":"\u00201.2.3.4"}"#, r#"{"m":"\u0020[ipv4]"}"#),
            (r#"{"a":"Bearer ab\/cd=="}"#, r#"{"a":"Bearer [token]"}"#),
            // An escaped backslash followed by a real letter is a word.
            (
                r#"{"m":"\\n1.2.3.4 \\nbob@example.com"}"#,
                r#"{"m":"\\n1.2.3.4 \\[email]"}"#,
            ),
        ]);
        let json =
            r#"{"msg":"user bob@example.com\nfrom 10.1.2.3\tauth Bearer x.y\/z","ip":"8.8.8.8"}"#;
        let masked = all(json);
        assert_eq!(
            masked,
            r#"{"msg":"user [email]\nfrom [ipv4]\tauth Bearer [token]","ip":"[ipv4]"}"#
        );
    }

    #[test]
    fn maskers_can_be_chosen() {
        let text = "bob@example.com 1.2.3.4 Bearer abc";
        let with = |config: &str| {
            Redactor::configure(config)
                .unwrap()
                .redact(text)
                .into_owned()
        };
        assert_eq!(with(""), "[email] [ipv4] Bearer [token]");
        assert_eq!(with("email"), "[email] 1.2.3.4 Bearer abc");
        assert_eq!(with("ipv4"), "bob@example.com [ipv4] Bearer abc");
        assert_eq!(with("bearer"), "bob@example.com 1.2.3.4 Bearer [token]");
        assert_eq!(with(" bearer , email "), "[email] 1.2.3.4 Bearer [token]");
        assert_eq!(
            with("email,ipv4,bearer,email"),
            "[email] [ipv4] Bearer [token]"
        );
        // Without the bearer masker an IPv4 token is masked as an address.
        assert_eq!(
            Redactor::configure("ipv4")
                .unwrap()
                .redact("Bearer 1.2.3.4"),
            "Bearer [ipv4]"
        );
    }

    #[test]
    fn bad_config_is_refused() {
        for bad in [
            "phone",
            "email,",
            ",email",
            "email,,ipv4",
            "EMAIL",
            "email ipv4",
        ] {
            let err = Redactor::configure(bad).unwrap_err();
            assert!(!err.is_empty() && !err.contains('\n'), "{bad}: {err}");
        }
        let mut rt = Runtime::<Redactor>::new();
        assert!(matches!(
            rt.configure("ssn"),
            Err(RuntimeError::InvalidConfig(_))
        ));
    }

    #[test]
    fn unchanged_text_is_not_copied() {
        assert!(matches!(
            Redactor::default().redact("nothing to see, v1.2.3"),
            Cow::Borrowed(_)
        ));
        assert!(matches!(Redactor::default().redact(""), Cow::Borrowed(_)));
    }

    fn records() -> Vec<OwnedRecord> {
        let values: Vec<Vec<u8>> = vec![
            b"login bob@example.com from 10.0.0.1".to_vec(),
            b"nothing here".to_vec(),
            vec![0xff, 0xfe, b'a'],
            br#"{"auth":"Bearer abc.def","ip":"1.2.3.4"}"#.to_vec(),
            Vec::new(),
            "caf\u{e9} 8.8.4.4".as_bytes().to_vec(),
        ];
        (0..60)
            .map(|i| OwnedRecord {
                partition: 3,
                offset: i,
                timestamp_ms: 1_700_000_000_000 + i,
                key: (i % 2 == 0).then(|| format!("k{i}").into_bytes()),
                value: values[i as usize % values.len()].clone(),
                headers: vec![Header {
                    key: "trace".into(),
                    value: vec![i as u8],
                }],
            })
            .collect()
    }

    fn run_in_batches(
        rt: &mut Runtime<Redactor>,
        input: &[OwnedRecord],
        size: usize,
    ) -> BatchOutput {
        let mut all = BatchOutput::default();
        for (n, chunk) in input.chunks(size).enumerate() {
            let base = (n * size) as u32;
            let batch = rt.process_batch(chunk).unwrap();
            all.outputs
                .extend(batch.outputs.into_iter().map(|(i, o)| (i + base, o)));
            all.rejections
                .extend(batch.rejections.into_iter().map(|(i, r)| (i + base, r)));
        }
        all
    }

    #[test]
    fn one_output_per_record_with_key_and_headers_kept() {
        let input = records();
        let mut rt = Runtime::<Redactor>::new();
        rt.configure("").unwrap();
        let out = rt.process_batch(&input).unwrap();
        assert_eq!(out.outputs.len() + out.rejections.len(), input.len());
        for (i, output) in &out.outputs {
            let record = &input[*i as usize];
            assert_eq!(output.key, record.key);
            assert_eq!(output.headers, record.headers);
            assert_eq!(output.topic, None);
            assert_eq!(
                output.value,
                all(std::str::from_utf8(&record.value).unwrap()).into_bytes()
            );
        }
        assert_eq!(out.outputs[0].1.value, b"login [email] from [ipv4]");
        assert_eq!(out.outputs[1].1.value, b"nothing here");
        assert_eq!(
            out.rejections[0],
            (2, "the value is not valid UTF-8 text".to_string())
        );
        assert!(out.rejections.iter().all(|(i, _)| i % 6 == 2));
    }

    #[test]
    fn outputs_identical_when_the_input_is_split_into_different_batch_sizes() {
        let input = records();
        let mut rt = Runtime::<Redactor>::new();
        rt.configure("").unwrap();
        let expected = run_in_batches(&mut rt, &input, input.len());
        for size in [1, 2, 5, 7, 59] {
            let mut rt = Runtime::<Redactor>::new();
            rt.configure("").unwrap();
            assert_eq!(
                run_in_batches(&mut rt, &input, size),
                expected,
                "size {size}"
            );
        }
    }

    #[test]
    fn snapshot_restore_mid_stream_gives_identical_output() {
        let input = records();
        let mut whole = Runtime::<Redactor>::new();
        whole.configure("email,ipv4").unwrap();
        let expected = run_in_batches(&mut whole, &input, input.len());

        let mut first = Runtime::<Redactor>::new();
        first.configure("email,ipv4").unwrap();
        let mut got = run_in_batches(&mut first, &input[..25], 10);
        let snap = first.snapshot().unwrap();
        let mut second = Runtime::<Redactor>::new();
        second.configure("email,ipv4").unwrap();
        second.restore(&snap).unwrap();
        let tail = run_in_batches(&mut second, &input[25..], 10);
        got.outputs
            .extend(tail.outputs.into_iter().map(|(i, o)| (i + 25, o)));
        got.rejections
            .extend(tail.rejections.into_iter().map(|(i, r)| (i + 25, r)));
        assert_eq!(got, expected);
        assert_eq!(second.snapshot().unwrap(), whole.snapshot().unwrap());
    }

    /// Text made of fragments that exercise the scanners' edges.
    fn fragments() -> impl Strategy<Value = String> {
        let fragment = prop_oneof![
            Just("@".to_string()),
            Just(".".to_string()),
            Just(" ".to_string()),
            Just("\\".to_string()),
            Just("\\n".to_string()),
            Just("\\u00e9".to_string()),
            Just("Bearer ".to_string()),
            Just("bob".to_string()),
            Just("example.com".to_string()),
            Just("é".to_string()),
            Just("[token]".to_string()),
            "[0-9]{1,4}",
            "[a-zA-Z0-9._+/=@-]{1,6}",
            any::<char>().prop_map(String::from),
        ];
        proptest::collection::vec(fragment, 0..24).prop_map(|v| v.concat())
    }

    proptest! {
        #[test]
        fn redaction_is_idempotent(text in fragments()) {
            let once = all(&text);
            prop_assert_eq!(all(&once), once);
        }

        #[test]
        fn text_without_triggers_is_unchanged(text in "[^@0-9bB]{0,64}") {
            prop_assert!(matches!(Redactor::default().redact(&text), Cow::Borrowed(_)));
        }

        #[test]
        fn json_stays_json(body in json_string_body()) {
            let input = format!("{{\"msg\":\"{body}\",\"n\":1}}");
            let masked = all(&input);
            let parsed: serde_json::Value = serde_json::from_str(&masked)
                .map_err(|e| TestCaseError::fail(format!("{input} -> {masked}: {e}")))?;
            prop_assert_eq!(&parsed["n"], &serde_json::json!(1));
        }
    }

    /// The inside of a JSON string literal, from pieces that are each valid:
    /// escapes, addresses, tokens and plain text.
    fn json_string_body() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just("\\n".to_string()),
            Just("\\t".to_string()),
            Just("\\\\".to_string()),
            Just("\\\"".to_string()),
            Just("\\/".to_string()),
            Just("\\u00e9".to_string()),
            Just("\\u0020".to_string()),
            Just("@".to_string()),
            Just(".".to_string()),
            Just(" ".to_string()),
            Just("Bearer ".to_string()),
            Just("bob@example.com".to_string()),
            "[0-9]{1,3}",
            "[a-zA-Z0-9._+/=@-]{1,6}",
            "[^\"\\\\\\x00-\\x1f]",
        ];
        proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
    }
}

logstream_sdk::export_processor!(Redactor);
