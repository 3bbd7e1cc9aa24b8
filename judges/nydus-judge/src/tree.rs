//! `check` and `walk`: load a bootstrap as nydusd does and go through every inode from the root.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::io::{BufWriter, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use nydus_api::ConfigV2;
use nydus_rafs::metadata::chunk::ChunkWrapper;
use nydus_rafs::metadata::direct_v6;
use nydus_rafs::metadata::{RafsInode, RafsInodeExt, RafsInodeWalkAction, RafsSuper};
use nydus_storage::device::BlobChunkInfo;
use serde_json::{json, Map, Value};

/// A temporary folder, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(near: &Path, tag: &str) -> Result<Self> {
        let base = if near.as_os_str().is_empty() {
            Path::new(".")
        } else {
            near
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            ".nydus-judge-{}-{}-{}",
            tag,
            std::process::id(),
            nanos
        ));
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating a temporary folder {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bootstrap loaded as nydusd loads it: `RafsSuper::load_from_file` in direct mode, with
/// `validate` on. The configuration names a localfs backend (the file's folder) and a cache
/// folder: a plain bootstrap file never touches them (its blobs are not accessible), while a
/// layer file with an inlined bootstrap (named by its blob id) is opened the way nydusd opens
/// one: its `image.boot` is extracted and the blob device is set up from the layer.
pub struct Loaded {
    pub rs: RafsSuper,
    _work: TempDir,
}

/// `validate` is nydusd's `rafs.validate`: on a layer file it also sets up the blob device,
/// whose chunk infos (read from the layer's blob.meta) then replace the bootstrap's.
pub fn load(path: &str, validate: bool) -> Result<Loaded> {
    let path = Path::new(path);
    let md = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if !md.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    let abs = std::fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
    let dir = abs.parent().unwrap_or_else(|| Path::new("/")).to_path_buf();
    let work = TempDir::new(&std::env::temp_dir(), "cache")?;
    let config = localfs_config(&dir, &work.0, Some(validate))?;
    let (rs, _reader) = RafsSuper::load_from_file(&abs, Arc::new(config), false)
        .with_context(|| format!("loading {}", path.display()))?;
    Ok(Loaded { rs, _work: work })
}

/// A nydus configuration with a localfs backend reading blobs from `blob_dir`, a file cache in
/// `work_dir`, and (when `validate` is given) a RAFS section in direct mode.
pub fn localfs_config(
    blob_dir: &Path,
    work_dir: &Path,
    validate: Option<bool>,
) -> Result<ConfigV2> {
    let mut config = json!({
        "version": 2,
        "id": "nydus-judge",
        "backend": {"type": "localfs", "localfs": {"dir": blob_dir.to_string_lossy()}},
        "cache": {
            "type": "filecache",
            "compressed": false,
            "validate": false,
            "filecache": {"work_dir": work_dir.to_string_lossy()}
        }
    });
    if let Some(validate) = validate {
        config["rafs"] = json!({"mode": "direct", "validate": validate});
    }
    std::str::FromStr::from_str(&config.to_string())
        .map_err(|e| anyhow!("building the nydus configuration: {}", e))
}

pub fn version(rs: &RafsSuper) -> Result<u32> {
    if rs.meta.is_v5() {
        Ok(5)
    } else if rs.meta.is_v6() {
        Ok(6)
    } else {
        bail!("unknown RAFS version {:#x}", rs.meta.version)
    }
}

/// An inode reached through a directory entry.
enum Handle {
    Ext(Arc<dyn RafsInodeExt>),
    Plain(Arc<dyn RafsInode>),
}

impl Handle {
    fn ext(&self) -> Result<&dyn RafsInodeExt> {
        match self {
            Handle::Ext(i) => Ok(i.as_ref()),
            Handle::Plain(i) => i
                .as_any()
                .downcast_ref::<direct_v6::OndiskInodeWrapper>()
                .map(|w| w as &dyn RafsInodeExt)
                .ok_or_else(|| anyhow!("unexpected inode object type")),
        }
    }
}

/// One directory's children in the bootstrap's order, and (RAFS v6) its "." and ".." nids.
struct Children {
    entries: Vec<(OsString, Handle)>,
    dot: Option<u64>,
    dotdot: Option<u64>,
}

fn children(dir: &dyn RafsInodeExt, v6: bool) -> Result<Children> {
    let mut out = Children {
        entries: Vec::new(),
        dot: None,
        dotdot: None,
    };
    if v6 {
        // readdir's path in nydusd: the dirents in their on-disk order.
        if dir.size() == 0 {
            bail!("directory ino {} has size 0 (no dirents)", dir.ino());
        }
        let mut error: Option<anyhow::Error> = None;
        dir.walk_children_inodes(0, &mut |inode, name, nid, _offset| {
            if name == "." {
                out.dot = Some(nid);
            } else if name == ".." {
                out.dotdot = Some(nid);
            } else {
                match inode {
                    Some(i) => out.entries.push((name, Handle::Plain(i))),
                    None => {
                        error = Some(anyhow!("dirent {:?} has no inode", name));
                        return Ok(RafsInodeWalkAction::Break);
                    }
                }
            }
            Ok(RafsInodeWalkAction::Continue)
        })
        .with_context(|| format!("reading the dirents of directory ino {}", dir.ino()))?;
        if let Some(e) = error {
            return Err(e);
        }
    } else {
        for idx in 0..dir.get_child_count() {
            let child = dir
                .get_child_by_index(idx)
                .with_context(|| format!("child {} of directory ino {}", idx, dir.ino()))?;
            out.entries.push((child.name(), Handle::Ext(child)));
        }
    }
    Ok(out)
}

/// What `traverse` calls for each entry: path, inode, parent inode number, children.
type Visit<'a> = dyn FnMut(&[u8], &dyn RafsInodeExt, u64, Option<&Children>) -> Result<()> + 'a;

/// Depth first from the root, children in the bootstrap's order. `visit` gets the path, the
/// inode, its parent's inode number and (for a directory) its children.
fn traverse(
    rs: &RafsSuper,
    visit: &mut Visit,
) -> Result<()> {
    let v6 = version(rs)? == 6;
    let root_ino = rs.superblock.root_ino();
    let root = rs
        .get_extended_inode(root_ino, false)
        .with_context(|| format!("root inode {}", root_ino))?;
    if !root.is_dir() {
        bail!("root inode {} is not a directory", root_ino);
    }
    let mut seen_dirs: HashSet<u64> = HashSet::new();
    // (path, inode, parent ino)
    let mut stack: Vec<(Vec<u8>, Handle, u64)> = vec![(b"/".to_vec(), Handle::Ext(root), root_ino)];
    while let Some((path, handle, parent)) = stack.pop() {
        let inode = handle.ext()?;
        let what = || display_path(&path);
        if inode.is_dir() {
            if !seen_dirs.insert(inode.ino()) {
                bail!(
                    "{}: directory ino {} reached twice (cycle)",
                    what(),
                    inode.ino()
                );
            }
            let kids = children(inode, v6).with_context(what)?;
            visit(&path, inode, parent, Some(&kids)).with_context(what)?;
            let ino = inode.ino();
            for (name, child) in kids.entries.into_iter().rev() {
                let mut p = path.clone();
                if p != b"/" {
                    p.push(b'/');
                }
                p.extend_from_slice(name.as_bytes());
                stack.push((p, child, ino));
            }
        } else {
            visit(&path, inode, parent, None).with_context(what)?;
        }
    }
    Ok(())
}

fn display_path(path: &[u8]) -> String {
    String::from_utf8_lossy(path).into_owned()
}

fn file_type(mode: u32) -> &'static str {
    match mode & libc_s_ifmt::S_IFMT {
        libc_s_ifmt::S_IFDIR => "dir",
        libc_s_ifmt::S_IFREG => "reg",
        libc_s_ifmt::S_IFLNK => "lnk",
        libc_s_ifmt::S_IFCHR => "chr",
        libc_s_ifmt::S_IFBLK => "blk",
        libc_s_ifmt::S_IFIFO => "fifo",
        libc_s_ifmt::S_IFSOCK => "sock",
        _ => "unknown",
    }
}

mod libc_s_ifmt {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFSOCK: u32 = 0o140000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
}

/// Every extended attribute: the names listed, each value read by name.
fn xattrs(inode: &dyn RafsInodeExt) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let names = inode.get_xattrs().context("listing xattrs")?;
    for name in names {
        let value = inode
            .get_xattr(OsStr::from_bytes(&name))
            .with_context(|| format!("reading xattr {:?}", String::from_utf8_lossy(&name)))?
            .ok_or_else(|| {
                anyhow!(
                    "xattr {:?} is listed but has no value",
                    String::from_utf8_lossy(&name)
                )
            })?;
        out.push((name, value));
    }
    Ok(out)
}

fn chunks(inode: &dyn RafsInodeExt) -> Result<Vec<Arc<dyn BlobChunkInfo>>> {
    let mut out = Vec::new();
    if inode.is_reg() {
        for idx in 0..inode.get_chunk_count() {
            let chunk = inode
                .get_chunk_info(idx)
                .with_context(|| format!("chunk {} of ino {}", idx, inode.ino()))?;
            out.push(chunk);
        }
    }
    Ok(out)
}

fn file_offset(chunk: &Arc<dyn BlobChunkInfo>) -> u64 {
    ChunkWrapper::from_chunk_info(chunk.clone()).file_offset()
}

pub fn check(path: &str) -> Result<()> {
    let loaded = load(path, true)?;
    let rs = &loaded.rs;
    let version = version(rs)?;
    let max_ino = rs.get_max_ino();
    let chunk_size = rs.meta.chunk_size as u64;
    if chunk_size == 0 || !chunk_size.is_power_of_two() {
        bail!("invalid chunk size {:#x} in the superblock", chunk_size);
    }
    let blobs = rs.superblock.get_blob_infos();

    let mut inodes: HashMap<u64, &'static str> = HashMap::new();
    let (mut files, mut dirs, mut symlinks, mut chunk_total) = (0u64, 0u64, 0u64, 0u64);

    traverse(rs, &mut |_path, inode, parent, kids| {
        let ino = inode.ino();
        inode
            .validate(max_ino, chunk_size)
            .with_context(|| format!("validating inode {}", ino))?;
        let attr = inode.get_attr();
        let kind = file_type(attr.mode);
        if kind == "unknown" {
            bail!(
                "inode {} has no valid file type (mode {:#o})",
                ino,
                attr.mode
            );
        }
        if attr.ino != ino {
            bail!("inode {} reports st_ino {}", ino, attr.ino);
        }
        xattrs(inode)?;
        if inode.is_symlink() {
            let target = inode.get_symlink().context("reading the symlink target")?;
            if target.is_empty() {
                bail!("symlink ino {} has an empty target", ino);
            }
        }
        if let Some(kids) = kids {
            if version == 6 {
                if kids.dot != Some(ino) {
                    bail!("directory ino {}: \".\" is {:?}", ino, kids.dot);
                }
                if kids.dotdot != Some(parent) {
                    bail!(
                        "directory ino {}: \"..\" is {:?}, parent is {}",
                        ino,
                        kids.dotdot,
                        parent
                    );
                }
            }
            if inode.get_child_count() as usize != kids.entries.len() {
                bail!(
                    "directory ino {} counts {} children, has {}",
                    ino,
                    inode.get_child_count(),
                    kids.entries.len()
                );
            }
            // lookup's path in nydusd: each child found again by name.
            for (name, child) in &kids.entries {
                let found = inode
                    .get_child_by_name(name)
                    .with_context(|| format!("looking up {:?} by name", name))?;
                let want = child.ext()?.ino();
                if found.ino() != want {
                    bail!(
                        "lookup of {:?} finds ino {}, the dirent says {}",
                        name,
                        found.ino(),
                        want
                    );
                }
            }
        }
        let first = inodes.insert(ino, kind);
        if let Some(prev) = first {
            if prev != kind {
                bail!("ino {} is reached as {} and as {}", ino, prev, kind);
            }
            return Ok(());
        }
        match kind {
            "dir" => dirs += 1,
            "lnk" => symlinks += 1,
            "reg" => files += 1,
            _ => {}
        }
        if inode.is_reg() {
            let size = inode.size();
            let list = chunks(inode)?;
            let want = size.div_ceil(chunk_size);
            if list.len() as u64 != want {
                bail!(
                    "file ino {} of size {} has {} chunks, expected {}",
                    ino,
                    size,
                    list.len(),
                    want
                );
            }
            let mut covered = 0u64;
            for (idx, chunk) in list.iter().enumerate() {
                let at = idx as u64 * chunk_size;
                let len = (size - at).min(chunk_size);
                if chunk.uncompressed_size() as u64 != len {
                    bail!(
                        "file ino {}: chunk {} at {} holds {} bytes, expected {}",
                        ino,
                        idx,
                        at,
                        chunk.uncompressed_size(),
                        len
                    );
                }
                // RAFS v5 keeps a chunk record per file; v6 shares one record between files.
                if version == 5 && file_offset(chunk) != at {
                    bail!(
                        "file ino {}: chunk {} has file offset {}, expected {}",
                        ino,
                        idx,
                        file_offset(chunk),
                        at
                    );
                }
                let blob_index = chunk.blob_index() as usize;
                if blob_index >= blobs.len() {
                    bail!(
                        "file ino {}: chunk {} names blob {}, the blob table has {}",
                        ino,
                        idx,
                        blob_index,
                        blobs.len()
                    );
                }
                covered += chunk.uncompressed_size() as u64;
            }
            if covered != size {
                bail!(
                    "file ino {}: chunks cover {} of {} bytes",
                    ino,
                    covered,
                    size
                );
            }
            chunk_total += list.len() as u64;
        }
        Ok(())
    })?;

    let blob_list: Vec<Value> = blobs
        .iter()
        .map(|b| {
            json!({
                "blob_id": b.blob_id(),
                "compressor": b.compressor().to_string(),
                "digester": b.digester().to_string().to_lowercase(),
                "chunk_size": b.chunk_size(),
                "chunk_count": b.chunk_count(),
            })
        })
        .collect();
    let out = json!({
        "inodes": inodes.len(),
        "files": files,
        "dirs": dirs,
        "symlinks": symlinks,
        "chunks": chunk_total,
        "blobs": blob_list,
        "version": version,
    });
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", out)?;
    Ok(())
}

fn put_bytes(map: &mut Map<String, Value>, key: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(s) => map.insert(key.to_string(), Value::from(s)),
        Err(_) => map.insert(format!("{}_hex", key), Value::from(hex::encode(bytes))),
    };
}

pub fn walk(path: &str) -> Result<()> {
    let loaded = load(path, false)?;
    let rs = &loaded.rs;
    let stdout = std::io::stdout().lock();
    let mut out = BufWriter::with_capacity(1 << 16, stdout);
    traverse(rs, &mut |path, inode, _parent, _kids| {
        let attr = inode.get_attr();
        let mut m = Map::new();
        put_bytes(&mut m, "path", path);
        m.insert("type".into(), file_type(attr.mode).into());
        m.insert("mode".into(), attr.mode.into());
        m.insert("uid".into(), attr.uid.into());
        m.insert("gid".into(), attr.gid.into());
        m.insert("size".into(), attr.size.into());
        // nydus's Attr carries the inode's i_u union as rdev for every type (a block address
        // for a directory); only a device's is a device number.
        let rdev = if inode.is_chrdev() || inode.is_blkdev() {
            attr.rdev
        } else {
            0
        };
        m.insert("rdev".into(), rdev.into());
        m.insert("mtime".into(), attr.mtime.into());
        m.insert("mtime_nsec".into(), attr.mtimensec.into());
        if inode.is_symlink() {
            let target = inode.get_symlink().context("reading the symlink target")?;
            put_bytes(&mut m, "target", &target.into_vec());
        } else {
            m.insert("target".into(), Value::Null);
        }
        let mut xa = Map::new();
        for (name, value) in xattrs(inode)? {
            xa.insert(
                String::from_utf8_lossy(&name).into_owned(),
                hex::encode(value).into(),
            );
        }
        m.insert("xattrs".into(), Value::Object(xa));
        m.insert("nlink".into(), attr.nlink.into());
        m.insert("ino".into(), inode.ino().into());
        let list: Vec<Value> = chunks(inode)?
            .iter()
            .map(|c| {
                json!({
                    "blob_index": c.blob_index(),
                    "digest": hex::encode(c.chunk_id().data),
                    "compressed_offset": c.compressed_offset(),
                    "compressed_size": c.compressed_size(),
                    "uncompressed_offset": c.uncompressed_offset(),
                    "uncompressed_size": c.uncompressed_size(),
                    "file_offset": file_offset(c),
                })
            })
            .collect();
        m.insert("chunks".into(), Value::Array(list));
        serde_json::to_writer(&mut out, &Value::Object(m))?;
        out.write_all(b"\n")?;
        Ok(())
    })?;
    out.flush()?;
    Ok(())
}
