//! Bytes to lines: the encoding is sniffed from the first 64 KiB (BOM, NUL pattern, UTF-8
//! validity) and the input is decoded chunk by chunk, so memory stays at one chunk plus the
//! longest line whatever the size of the file.
//!
//! Windows PowerShell 5.1 writes UTF-16LE with a BOM for `>`, cmd.exe writes the OEM code page
//! (CP850 in Western Europe, CP437 in the US), PowerShell 6+ and everything else UTF-8
//! (research/captures.md §4 T1). Decoding uses `encoding_rs` (UTF-8, UTF-16) and `oem_cp`'s
//! tables (OEM code pages); line ends may be LF or CRLF.

use std::io::Read;

use serde::Serialize;

/// How much is read to sniff the encoding.
const SNIFF_BYTES: usize = 64 * 1024;
/// Bytes read per chunk after that.
const CHUNK_BYTES: usize = 256 * 1024;
/// Longer lines are cut here (and counted): no capture format has lines this long, and a
/// binary or minified file must not grow memory without bound.
pub const MAX_LINE_CHARS: usize = 64 * 1024;

/// The text encoding of a capture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TextEncoding {
    /// UTF-8 without a byte-order mark (PowerShell 6+, macOS, Linux).
    Utf8,
    /// UTF-8 with a byte-order mark (`Out-File -Encoding utf8` in PowerShell 5.1).
    Utf8Bom,
    /// UTF-16 little-endian (PowerShell 5.1 `>`), with or without a BOM.
    Utf16le,
    /// UTF-16 big-endian with a BOM.
    Utf16be,
    /// OEM code page 850 (cmd.exe `>` in Western Europe; `ABHÖREN` is `ABH\x99REN`).
    Cp850,
    /// OEM code page 437 (cmd.exe `>` in the US).
    Cp437,
    /// OEM code page 866 (cmd.exe `>` in Russia).
    Cp866,
}

impl TextEncoding {
    /// Parses a `--encoding` value (`utf-8`, `utf-16le`, `cp850`, …).
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name.to_ascii_lowercase().replace('_', "-").as_str() {
            "utf8" | "utf-8" => TextEncoding::Utf8,
            "utf8-bom" | "utf-8-bom" => TextEncoding::Utf8Bom,
            "utf16le" | "utf-16le" | "utf-16" | "unicode" => TextEncoding::Utf16le,
            "utf16be" | "utf-16be" => TextEncoding::Utf16be,
            "cp850" | "850" | "ibm850" => TextEncoding::Cp850,
            "cp437" | "437" | "ibm437" => TextEncoding::Cp437,
            "cp866" | "866" | "ibm866" => TextEncoding::Cp866,
            _ => return None,
        })
    }

    /// The name used in reports and accepted by `--encoding`.
    pub fn name(self) -> &'static str {
        match self {
            TextEncoding::Utf8 => "utf-8",
            TextEncoding::Utf8Bom => "utf-8-bom",
            TextEncoding::Utf16le => "utf-16le",
            TextEncoding::Utf16be => "utf-16be",
            TextEncoding::Cp850 => "cp850",
            TextEncoding::Cp437 => "cp437",
            TextEncoding::Cp866 => "cp866",
        }
    }
}

impl Serialize for TextEncoding {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// Why a file could not be read as text.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Reading failed.
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// NUL bytes outside a UTF-16 pattern: an executable, an archive, an image.
    #[error("binary data, not text (NUL bytes at offset {offset}); expected the text output of netstat, ss, Get-NetTCPConnection, netsh or a load tester")]
    Binary {
        /// Offset of the first NUL byte.
        offset: usize,
    },
}

/// What the line reader saw besides the lines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DecodeStats {
    /// Lines read.
    pub lines: u64,
    /// Lines longer than [`MAX_LINE_CHARS`], cut there.
    pub cut_lines: u64,
    /// Bytes read.
    pub bytes: u64,
}

/// Guesses the encoding from the first bytes of a file.
pub fn sniff(head: &[u8]) -> Result<TextEncoding, DecodeError> {
    if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
        return Ok(TextEncoding::Utf8Bom);
    }
    if head.starts_with(&[0xFF, 0xFE]) {
        return Ok(TextEncoding::Utf16le);
    }
    if head.starts_with(&[0xFE, 0xFF]) {
        return Ok(TextEncoding::Utf16be);
    }
    if let Some(offset) = head.iter().position(|b| *b == 0) {
        // UTF-16LE without BOM: ASCII text with a NUL in every odd byte.
        let pairs = head.len() / 2;
        let odd_nuls = head.chunks_exact(2).filter(|p| p[1] == 0).count();
        if pairs >= 2 && odd_nuls * 10 >= pairs * 9 {
            return Ok(TextEncoding::Utf16le);
        }
        return Err(DecodeError::Binary { offset });
    }
    match std::str::from_utf8(head) {
        Ok(_) => Ok(TextEncoding::Utf8),
        // A multi-byte character cut at the end of the sniffed block is still UTF-8.
        Err(e) if e.error_len().is_none() => Ok(TextEncoding::Utf8),
        Err(_) => Ok(TextEncoding::Cp850),
    }
}

/// Reads `input` as text line by line, calling `on_line` with each line (without its line end;
/// a trailing CR is removed). `forced` overrides the sniffed encoding. Returns the encoding
/// used and counts.
///
/// # Errors
/// [`DecodeError`] when reading fails or the data is binary.
pub fn for_each_line<R: Read>(
    mut input: R,
    forced: Option<TextEncoding>,
    mut on_line: impl FnMut(&str),
) -> Result<(TextEncoding, DecodeStats), DecodeError> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut input)
        .take(SNIFF_BYTES as u64)
        .read_to_end(&mut head)?;
    let encoding = match forced {
        Some(e) => e,
        None => sniff(&head)?,
    };
    let mut splitter = LineSplitter::default();
    let mut stats = DecodeStats::default();
    let mut decoder = Decoder::new(encoding);
    let mut text = String::with_capacity(CHUNK_BYTES + 16);
    let mut chunk = head;
    loop {
        stats.bytes += chunk.len() as u64;
        let last = chunk.is_empty();
        text.clear();
        decoder.decode(&chunk, &mut text, last);
        splitter.push(&text, &mut stats, &mut on_line);
        if last {
            break;
        }
        chunk.clear();
        chunk.resize(CHUNK_BYTES, 0);
        let n = read_full(&mut input, &mut chunk)?;
        chunk.truncate(n);
    }
    splitter.finish(&mut stats, &mut on_line);
    Ok((encoding, stats))
}

fn read_full<R: Read>(input: &mut R, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match input.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

enum Decoder {
    Unicode(encoding_rs::Decoder),
    Oem(&'static [char; 128]),
}

impl Decoder {
    fn new(encoding: TextEncoding) -> Self {
        use oem_cp::code_table::{
            DECODING_TABLE_CP437, DECODING_TABLE_CP850, DECODING_TABLE_CP866,
        };
        match encoding {
            TextEncoding::Utf8 | TextEncoding::Utf8Bom => {
                Decoder::Unicode(encoding_rs::UTF_8.new_decoder_with_bom_removal())
            }
            TextEncoding::Utf16le => {
                Decoder::Unicode(encoding_rs::UTF_16LE.new_decoder_with_bom_removal())
            }
            TextEncoding::Utf16be => {
                Decoder::Unicode(encoding_rs::UTF_16BE.new_decoder_with_bom_removal())
            }
            TextEncoding::Cp850 => Decoder::Oem(&DECODING_TABLE_CP850),
            TextEncoding::Cp437 => Decoder::Oem(&DECODING_TABLE_CP437),
            TextEncoding::Cp866 => Decoder::Oem(&DECODING_TABLE_CP866),
        }
    }

    fn decode(&mut self, bytes: &[u8], out: &mut String, last: bool) {
        match self {
            Decoder::Unicode(decoder) => {
                let needed = decoder
                    .max_utf8_buffer_length(bytes.len())
                    .unwrap_or(bytes.len() * 3 + 16);
                out.reserve(needed);
                let (_result, _read, _replaced) = decoder.decode_to_string(bytes, out, last);
            }
            Decoder::Oem(table) => {
                out.reserve(bytes.len() * 2);
                for &b in bytes {
                    out.push(if b < 0x80 {
                        char::from(b)
                    } else {
                        table[usize::from(b - 0x80)]
                    });
                }
            }
        }
    }
}

/// Splits decoded text into lines across chunk boundaries.
#[derive(Default)]
struct LineSplitter {
    pending: String,
    pending_cut: bool,
}

impl LineSplitter {
    fn push(&mut self, text: &str, stats: &mut DecodeStats, on_line: &mut impl FnMut(&str)) {
        let mut rest = text;
        while let Some(pos) = rest.find('\n') {
            let piece = &rest[..pos];
            rest = &rest[pos + 1..];
            if self.pending.is_empty() && !self.pending_cut {
                emit(piece, stats, on_line);
            } else {
                self.append(piece);
                let line = std::mem::take(&mut self.pending);
                if self.pending_cut {
                    stats.cut_lines += 1;
                    self.pending_cut = false;
                }
                emit(&line, stats, on_line);
            }
        }
        self.append(rest);
    }

    fn append(&mut self, piece: &str) {
        let room = MAX_LINE_CHARS.saturating_sub(self.pending.len());
        if piece.len() <= room {
            self.pending.push_str(piece);
        } else {
            let mut end = room;
            while !piece.is_char_boundary(end) {
                end -= 1;
            }
            self.pending.push_str(&piece[..end]);
            self.pending_cut = true;
        }
    }

    fn finish(&mut self, stats: &mut DecodeStats, on_line: &mut impl FnMut(&str)) {
        if !self.pending.is_empty() || self.pending_cut {
            if self.pending_cut {
                stats.cut_lines += 1;
            }
            let line = std::mem::take(&mut self.pending);
            emit(&line, stats, on_line);
        }
    }
}

fn emit(line: &str, stats: &mut DecodeStats, on_line: &mut impl FnMut(&str)) {
    stats.lines += 1;
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.len() > MAX_LINE_CHARS {
        stats.cut_lines += 1;
        let mut end = MAX_LINE_CHARS;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        on_line(&line[..end]);
    } else {
        on_line(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(bytes: &[u8]) -> (TextEncoding, Vec<String>) {
        let mut out = Vec::new();
        let (enc, _) = for_each_line(bytes, None, |l| out.push(l.to_string())).expect("decodes");
        (enc, out)
    }

    #[test]
    fn utf16le_with_bom_and_crlf() {
        let mut bytes = vec![0xFF, 0xFE];
        for unit in "  TCP    0.0.0.0:135\r\nzwei\r\n".encode_utf16() {
            bytes.extend_from_slice(&unit.to_le_bytes());
        }
        let (enc, got) = lines(&bytes);
        assert_eq!(enc, TextEncoding::Utf16le);
        assert_eq!(got, vec!["  TCP    0.0.0.0:135", "zwei"]);
    }

    #[test]
    fn cp850_umlaut_becomes_the_letter() {
        let (enc, got) = lines(b"  TCP    0.0.0.0:102  0.0.0.0:0  ABH\x99REN\r\n");
        assert_eq!(enc, TextEncoding::Cp850);
        assert_eq!(got, vec!["  TCP    0.0.0.0:102  0.0.0.0:0  ABHÖREN"]);
    }

    #[test]
    fn utf8_bom_is_removed_and_binary_refused() {
        let (enc, got) = lines(b"\xEF\xBB\xBFa\nb");
        assert_eq!(enc, TextEncoding::Utf8Bom);
        assert_eq!(got, vec!["a", "b"]);
        assert!(matches!(
            for_each_line(&b"\x7fELF\x02\x01\x01\x00\x00\x00\x00"[..], None, |_| {}),
            Err(DecodeError::Binary { offset: 7 })
        ));
    }

    #[test]
    fn long_lines_are_cut_and_counted() {
        let long = "x".repeat(MAX_LINE_CHARS * 3);
        let text = format!("a\n{long}\nb\n");
        let mut got = Vec::new();
        let (_, stats) =
            for_each_line(text.as_bytes(), None, |l| got.push(l.len())).expect("decodes");
        assert_eq!(got, vec![1, MAX_LINE_CHARS, 1]);
        assert_eq!(stats.cut_lines, 1);
    }
}
