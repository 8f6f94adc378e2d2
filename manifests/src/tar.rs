//! The ustar subset format 1 uses: 512-byte headers, regular files only, no extension headers.
//!
//! Reading and writing are our own code rather than the `tar` crate's because the reader must
//! refuse, not skip or reinterpret, anything outside this subset (PAX and GNU extension headers
//! included), and the writer must produce exactly the bytes the format document specifies.

/// Size of a tar block.
pub const BLOCK: usize = 512;

/// Type flags a header may carry. Only [`TYPE_REGULAR`] is valid in a bundle.
pub const TYPE_REGULAR: u8 = b'0';
pub const TYPE_HARDLINK: u8 = b'1';
pub const TYPE_SYMLINK: u8 = b'2';
pub const TYPE_CHAR_DEVICE: u8 = b'3';
pub const TYPE_BLOCK_DEVICE: u8 = b'4';
pub const TYPE_DIRECTORY: u8 = b'5';
pub const TYPE_FIFO: u8 = b'6';

/// The fields of one header, undecoded: `path` may be anything, so tests can write hostile ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawHeader {
    pub path: String,
    pub mode: u32,
    pub size: u64,
    pub mtime: u64,
    pub typeflag: u8,
    pub linkname: String,
}

impl RawHeader {
    /// A regular-file header as the writer makes it.
    pub fn file(path: &str, mode: u32, size: u64, mtime: u64) -> Self {
        Self {
            path: path.to_owned(),
            mode,
            size,
            mtime,
            typeflag: TYPE_REGULAR,
            linkname: String::new(),
        }
    }

    /// Encodes the header. Fails when a field does not fit its ustar slot.
    pub fn encode(&self) -> Result<[u8; BLOCK], String> {
        let mut block = [0u8; BLOCK];
        let (prefix, name) = crate::name::ustar_split(&self.path)
            .ok_or_else(|| format!("path {:?} does not fit a ustar header", self.path))?;
        put_str(&mut block[0..100], name)?;
        put_octal(&mut block[100..108], u64::from(self.mode))?;
        put_octal(&mut block[108..116], 0)?; // uid
        put_octal(&mut block[116..124], 0)?; // gid
        put_octal(&mut block[124..136], self.size)?;
        put_octal(&mut block[136..148], self.mtime)?;
        block[156] = self.typeflag;
        put_str(&mut block[157..257], &self.linkname)?;
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        put_str(&mut block[345..500], prefix)?;
        // The checksum is computed with its own field read as eight spaces.
        block[148..156].fill(b' ');
        let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
        let digits = format!("{sum:06o}\0 ");
        block[148..156].copy_from_slice(digits.as_bytes());
        Ok(block)
    }

    /// Decodes a header block, checking magic, checksum and numeric fields strictly.
    pub fn decode(block: &[u8; BLOCK]) -> Result<Self, String> {
        if &block[257..263] != b"ustar\0" || &block[263..265] != b"00" {
            return Err("not a POSIX ustar header (bad magic or version)".into());
        }
        let stored = get_octal(&block[148..156], "checksum")?;
        let computed: u64 = block
            .iter()
            .enumerate()
            .map(|(i, &b)| if (148..156).contains(&i) { u64::from(b' ') } else { u64::from(b) })
            .sum();
        if stored != computed {
            return Err(format!("header checksum is {stored:o}, computed {computed:o}"));
        }
        let name = get_str(&block[0..100], "name")?;
        let prefix = get_str(&block[345..500], "prefix")?;
        let path = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let mode = get_octal(&block[100..108], "mode")?;
        Ok(Self {
            path,
            mode: u32::try_from(mode).map_err(|_| "mode out of range".to_owned())?,
            size: get_octal(&block[124..136], "size")?,
            mtime: get_octal(&block[136..148], "mtime")?,
            typeflag: block[156],
            linkname: get_str(&block[157..257], "linkname")?,
        })
    }
}

/// Human name of a type flag, for error messages.
pub fn type_name(flag: u8) -> String {
    match flag {
        b'0' | 0 => "regular file".into(),
        TYPE_HARDLINK => "hard link".into(),
        TYPE_SYMLINK => "symbolic link".into(),
        TYPE_CHAR_DEVICE => "character device".into(),
        TYPE_BLOCK_DEVICE => "block device".into(),
        TYPE_DIRECTORY => "directory".into(),
        TYPE_FIFO => "fifo".into(),
        b'7' => "contiguous file".into(),
        b'x' | b'g' => "PAX extended header".into(),
        b'L' | b'K' => "GNU long-name header".into(),
        other => format!("unknown type {:?}", char::from(other)),
    }
}

/// Bytes of zero padding after a body of `size` bytes.
pub fn padding(size: u64) -> usize {
    ((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64) as usize
}

/// Bytes an archive takes for bodies of `sizes`, including headers, padding and the end marker.
pub fn archive_len(sizes: impl IntoIterator<Item = u64>) -> u64 {
    sizes.into_iter().map(|s| BLOCK as u64 + s + padding(s) as u64).sum::<u64>() + 2 * BLOCK as u64
}

fn put_str(field: &mut [u8], value: &str) -> Result<(), String> {
    if value.len() > field.len() {
        return Err(format!("{value:?} is longer than its {}-byte field", field.len()));
    }
    field[..value.len()].copy_from_slice(value.as_bytes());
    Ok(())
}

fn put_octal(field: &mut [u8], value: u64) -> Result<(), String> {
    let digits = format!("{value:0width$o}", width = field.len() - 1);
    if digits.len() != field.len() - 1 {
        return Err(format!("{value} does not fit a {}-byte octal field", field.len()));
    }
    field[..digits.len()].copy_from_slice(digits.as_bytes());
    field[digits.len()] = 0;
    Ok(())
}

fn get_str(field: &[u8], what: &str) -> Result<String, String> {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    if field[end..].iter().any(|&b| b != 0) {
        return Err(format!("{what} field has data after its NUL terminator"));
    }
    String::from_utf8(field[..end].to_vec()).map_err(|_| format!("{what} field is not UTF-8"))
}

/// Octal digits, optionally space-padded in front, ended by NUL or space. The base-256 form
/// some writers use for large numbers is refused.
fn get_octal(field: &[u8], what: &str) -> Result<u64, String> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        return Err(format!("{what} field uses base-256, which format 1 does not"));
    }
    let text = field
        .iter()
        .skip_while(|&&b| b == b' ')
        .take_while(|&&b| b != 0 && b != b' ')
        .copied()
        .collect::<Vec<u8>>();
    if text.is_empty() || !text.iter().all(|b| (b'0'..=b'7').contains(b)) {
        return Err(format!("{what} field is not an octal number"));
    }
    let text = std::str::from_utf8(&text).expect("octal digits are ASCII");
    u64::from_str_radix(text, 8).map_err(|_| format!("{what} field overflows"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let h = RawHeader::file("policies/a.yml", 0o644, 1234, 1_700_000_000);
        let block = h.encode().unwrap();
        assert_eq!(RawHeader::decode(&block).unwrap(), h);
        let long = format!("{}/{}", "d".repeat(120), "f".repeat(90));
        let h = RawHeader::file(&long, 0o755, 0, 0);
        assert_eq!(RawHeader::decode(&h.encode().unwrap()).unwrap(), h);
    }

    #[test]
    fn refuses_corrupt_headers() {
        let mut block = RawHeader::file("a", 0o644, 1, 0).encode().unwrap();
        block[0] = b'b';
        assert!(RawHeader::decode(&block).unwrap_err().contains("checksum"));
        let mut block = RawHeader::file("a", 0o644, 1, 0).encode().unwrap();
        block[257] = b'x';
        assert!(RawHeader::decode(&block).unwrap_err().contains("magic"));
        assert!(RawHeader::file("a", 0o644, 1 << 33, 0).encode().is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(archive_len([1, 512]), 512 + 512 + 512 + 512 + 1024);
    }
}
