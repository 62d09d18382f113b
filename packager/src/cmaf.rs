//! Reading and retiming ISO-BMFF boxes of CMAF output, for stitching chunks: a chunk encoder
//! starts its timeline at zero, so its fragments' decode times (`tfdt`) move by the chunk's
//! start and their sequence numbers (`mfhd`) continue the previous chunk's.

/// Box types whose payload is a list of boxes (the ones walked here).
const CONTAINERS: [&[u8; 4]; 8] = [
    b"moov", b"trak", b"mdia", b"minf", b"stbl", b"mvex", b"moof", b"traf",
];

/// One box: its type and where its payload lies in the buffer.
struct BoxAt {
    kind: [u8; 4],
    payload: std::ops::Range<usize>,
}

/// The boxes directly inside `range` of `data`; `None` when a size runs past the end.
fn children(data: &[u8], range: std::ops::Range<usize>) -> Option<Vec<BoxAt>> {
    let mut out = Vec::new();
    let mut at = range.start;
    while at + 8 <= range.end {
        let size32 = u32::from_be_bytes(data[at..at + 4].try_into().ok()?) as usize;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().ok()?;
        let (header, size) = match size32 {
            1 => {
                let s = u64::from_be_bytes(data.get(at + 8..at + 16)?.try_into().ok()?);
                (16, usize::try_from(s).ok()?)
            }
            0 => (8, range.end - at),
            s => (8, s),
        };
        if size < header || at + size > range.end {
            return None;
        }
        out.push(BoxAt {
            kind,
            payload: at + header..at + size,
        });
        at += size;
    }
    Some(out)
}

/// Every box of type `kind` under `range`, searching the container boxes.
fn find_all(data: &[u8], range: std::ops::Range<usize>, kind: &[u8; 4]) -> Option<Vec<BoxAt>> {
    let mut found = Vec::new();
    for b in children(data, range)? {
        if &b.kind == kind {
            found.push(BoxAt {
                kind: b.kind,
                payload: b.payload.clone(),
            });
        } else if CONTAINERS.contains(&&b.kind) {
            found.extend(find_all(data, b.payload, kind)?);
        }
    }
    Some(found)
}

/// The media timescale (`mdhd`) of the single track of a CMAF init segment.
pub fn timescale(init: &[u8]) -> Option<u32> {
    let mdhd = find_all(init, 0..init.len(), b"mdhd")?.into_iter().next()?;
    let p = &init[mdhd.payload];
    let at = if *p.first()? == 1 { 20 } else { 12 };
    Some(u32::from_be_bytes(p.get(at..at + 4)?.try_into().ok()?))
}

/// Moves every fragment in `data` (one or more `moof` + `mdat`) later by `ticks` of its track's
/// timescale and its sequence number up by `sequence`. A 32-bit decode time that would overflow
/// is refused rather than wrapped.
pub fn retime(data: &mut [u8], ticks: u64, sequence: u32) -> Result<(), String> {
    let len = data.len();
    let moofs = find_all(data, 0..len, b"moof").ok_or("malformed fragment")?;
    if moofs.is_empty() {
        return Err("a segment without a moof".into());
    }
    for moof in moofs {
        for mfhd in find_all(data, moof.payload.clone(), b"mfhd").ok_or("malformed moof")? {
            let at = mfhd.payload.start + 4;
            let seq = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes"));
            data[at..at + 4].copy_from_slice(&(seq + sequence).to_be_bytes());
        }
        for tfdt in find_all(data, moof.payload.clone(), b"tfdt").ok_or("malformed moof")? {
            let p = tfdt.payload.clone();
            if data[p.start] == 1 {
                let at = p.start + 4;
                let t = u64::from_be_bytes(data[at..at + 8].try_into().expect("8 bytes"));
                data[at..at + 8].copy_from_slice(&(t + ticks).to_be_bytes());
            } else {
                let at = p.start + 4;
                let t = u32::from_be_bytes(data[at..at + 4].try_into().expect("4 bytes")) as u64;
                let moved = u32::try_from(t + ticks)
                    .map_err(|_| "a decode time past the 32-bit tfdt of this muxer".to_string())?;
                data[at..at + 4].copy_from_slice(&moved.to_be_bytes());
            }
        }
    }
    Ok(())
}

/// Zeroes the creation and modification times (`mvhd`, `tkhd`, `mdhd`) of an init segment:
/// the muxer stamps the wall clock, so two chunks of one rung would otherwise differ.
pub fn clear_times(init: &mut [u8]) -> Result<(), String> {
    let len = init.len();
    for kind in [b"mvhd", b"tkhd", b"mdhd"] {
        for b in find_all(init, 0..len, kind).ok_or("malformed init segment")? {
            let at = b.payload.start + 4;
            let n = if init[b.payload.start] == 1 { 16 } else { 8 };
            if at + n > b.payload.end {
                return Err("a truncated header box".into());
            }
            init[at..at + n].fill(0);
        }
    }
    Ok(())
}

/// The decode times (`tfdt`) of the fragments in `data`, for tests and checks.
pub fn decode_times(data: &[u8]) -> Vec<u64> {
    let Some(tfdts) = find_all(data, 0..data.len(), b"tfdt") else {
        return Vec::new();
    };
    tfdts
        .into_iter()
        .map(|b| {
            let p = &data[b.payload];
            if p[0] == 1 {
                u64::from_be_bytes(p[4..12].try_into().expect("8 bytes"))
            } else {
                u32::from_be_bytes(p[4..8].try_into().expect("4 bytes")) as u64
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn boxed(kind: &[u8; 4], payload: &[u8]) -> Vec<u8> {
        let mut b = ((payload.len() + 8) as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind);
        b.extend_from_slice(payload);
        b
    }

    fn fragment(seq: u32, tfdt_v1: Option<u64>, tfdt_v0: Option<u32>) -> Vec<u8> {
        let mut mfhd = vec![0, 0, 0, 0];
        mfhd.extend_from_slice(&seq.to_be_bytes());
        let tfdt = match (tfdt_v1, tfdt_v0) {
            (Some(t), _) => {
                let mut p = vec![1, 0, 0, 0];
                p.extend_from_slice(&t.to_be_bytes());
                p
            }
            (_, Some(t)) => {
                let mut p = vec![0, 0, 0, 0];
                p.extend_from_slice(&t.to_be_bytes());
                p
            }
            _ => unreachable!(),
        };
        let traf = boxed(
            b"traf",
            &[boxed(b"tfhd", &[0; 8]), boxed(b"tfdt", &tfdt)].concat(),
        );
        let moof = boxed(b"moof", &[boxed(b"mfhd", &mfhd), traf].concat());
        [moof, boxed(b"mdat", &[7; 5])].concat()
    }

    #[test]
    fn retiming_moves_every_fragment_and_refuses_an_overflow() {
        let mut seg = [fragment(1, Some(0), None), fragment(2, Some(512), None)].concat();
        retime(&mut seg, 90_000, 30).unwrap();
        assert_eq!(decode_times(&seg), vec![90_000, 90_512]);
        let moofs = find_all(&seg, 0..seg.len(), b"mfhd").unwrap();
        let seqs: Vec<u32> = moofs
            .iter()
            .map(|b| {
                u32::from_be_bytes(
                    seg[b.payload.start + 4..b.payload.start + 8]
                        .try_into()
                        .unwrap(),
                )
            })
            .collect();
        assert_eq!(seqs, vec![31, 32]);
        let mut v0 = fragment(1, None, Some(100));
        retime(&mut v0, 50, 0).unwrap();
        assert_eq!(decode_times(&v0), vec![150]);
        let mut v0 = fragment(1, None, Some(u32::MAX - 1));
        assert!(retime(&mut v0, 5, 0).is_err());
        assert!(retime(&mut [0u8; 3], 1, 0).is_err());
    }

    #[test]
    fn timescale_is_read_from_mdhd() {
        let mut mdhd = vec![0u8; 12];
        mdhd.extend_from_slice(&30_000u32.to_be_bytes());
        mdhd.extend_from_slice(&[0; 8]);
        let init = [
            boxed(b"ftyp", b"cmfc"),
            boxed(
                b"moov",
                &boxed(b"trak", &boxed(b"mdia", &boxed(b"mdhd", &mdhd))),
            ),
        ]
        .concat();
        assert_eq!(timescale(&init), Some(30_000));
        let mut stamped = init.clone();
        let at = stamped.len() - 20;
        stamped[at..at + 4].copy_from_slice(&[0xe7, 0x3a, 0x7f, 0x8f]);
        clear_times(&mut stamped).unwrap();
        assert_eq!(stamped, init, "creation and modification times zeroed");
    }
}
