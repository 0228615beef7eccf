use std::io::Write;

use bytes::Bytes;
use flate2::{
    Compression,
    write::{DeflateEncoder, GzEncoder, ZlibEncoder},
};
use proptest::prelude::*;

use super::{
    message::{DecodeError, MAX_MESSAGES, encoding},
    *,
};

fn headers(pairs: &[(&str, &str)]) -> Vec<Header> {
    pairs.iter().map(|(n, v)| Header { name: n.to_string(), value: Bytes::from(v.to_string()) }).collect()
}

/// One length-prefixed message.
pub(crate) fn frame(compressed: bool, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![u8::from(compressed)];
    out.extend((payload.len() as u32).to_be_bytes());
    out.extend(payload);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn raw_deflate(data: &[u8]) -> Vec<u8> {
    let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

const LIMIT: usize = 1 << 20;

#[test]
fn content_types_tell_grpc_and_its_codec() {
    let codec_of = |ct: &str| codec(&headers(&[("Content-Type", ct)]));
    assert_eq!(codec_of("application/grpc"), Some(Codec::Proto));
    assert_eq!(codec_of("application/grpc+proto"), Some(Codec::Proto));
    assert_eq!(codec_of("Application/GRPC+Proto; charset=utf-8"), Some(Codec::Proto));
    assert_eq!(codec_of("application/grpc+json"), Some(Codec::Json));
    assert_eq!(codec_of("application/grpc+thrift"), Some(Codec::Other("thrift".into())));
    assert_eq!(codec_of("application/grpc-web"), None);
    assert_eq!(codec_of("application/json"), None);
    assert_eq!(codec_of("APPLICATION/GRPC+JSON"), Some(Codec::Json));
    assert_eq!(codec_of("application/grpc+Thrift"), Some(Codec::Other("thrift".into())));
    assert_eq!(codec_of("application"), None);
    assert_eq!(codec_of("applicationé/grpc"), None, "not a char boundary where the prefix ends");
    assert_eq!(codec(&[]), None);
}

#[test]
fn methods_are_service_and_name() {
    assert_eq!(
        method("/inference.GRPCInferenceService/ModelInfer"),
        Some(("inference.GRPCInferenceService", "ModelInfer"))
    );
    for bad in ["/v2/models/m/infer", "inference.S/M", "/S/", "//M", "/S/M?x=1"] {
        assert_eq!(method(bad), None, "{bad}");
    }
}

#[test]
fn bodies_split_into_messages() {
    assert_eq!(split(b"", 10), Ok(vec![]));
    let mut body = frame(false, b"one");
    body.extend(frame(true, b""));
    body.extend(frame(false, b"three"));
    let frames = split(&body, 10).unwrap();
    let got: Vec<(bool, &[u8])> = frames.iter().map(|f| (f.compressed, f.payload)).collect();
    assert_eq!(got, [(false, &b"one"[..]), (true, &b""[..]), (false, &b"three"[..])]);
    // Any non-zero flag byte means compressed.
    let mut flagged = frame(false, b"x");
    flagged[0] = 7;
    assert!(split(&flagged, 1).unwrap()[0].compressed);
}

#[test]
fn broken_framing_is_an_error_that_says_where() {
    let mut body = frame(false, b"abc");
    body.extend([0, 0, 0]);
    assert_eq!(split(&body, 10), Err(FrameError::TruncatedPrefix { offset: 8, remaining: 3 }));
    let mut long = frame(false, b"abc");
    long.extend(frame(false, b"defgh"));
    long.truncate(long.len() - 2);
    assert_eq!(split(&long, 10), Err(FrameError::LengthBeyondBody { offset: 8, length: 5, remaining: 3 }));
    let huge = [0, 0xff, 0xff, 0xff, 0xff, 1, 2];
    assert_eq!(
        split(&huge, 10),
        Err(FrameError::LengthBeyondBody { offset: 0, length: u32::MAX as usize, remaining: 2 })
    );
    let many: Vec<u8> = (0..11).flat_map(|_| frame(false, b"")).collect();
    assert_eq!(split(&many, 10), Err(FrameError::TooManyMessages { limit: 10 }));
    assert_eq!(split(&many, 11).map(|f| f.len()), Ok(11));
    assert_eq!(
        FrameError::LengthBeyondBody { offset: 8, length: 5, remaining: 3 }.to_string(),
        "has a message of 5 bytes at offset 8, but only 3 bytes follow"
    );
}

#[test]
fn compressed_messages_decode_with_the_stream_encoding() {
    let text = b"a message, a message, a message";
    for (name, compressed) in [("gzip", gzip(text)), ("deflate", zlib(text)), ("deflate", raw_deflate(text))]
    {
        let mut body = frame(true, &compressed);
        body.extend(frame(false, b"plain"));
        let got = decode_messages(&headers(&[("grpc-encoding", name)]), &body, LIMIT).unwrap();
        assert_eq!(got, [&text[..], b"plain"], "{name}");
    }
    // Identity: flags clear, messages borrowed.
    let body = frame(false, b"x");
    let got = decode_messages(&headers(&[("grpc-encoding", "identity")]), &body, LIMIT).unwrap();
    assert!(matches!(got[0], std::borrow::Cow::Borrowed(b"x")));
    assert_eq!(encoding(&headers(&[("GRPC-Encoding", " GZIP ")])), "gzip");
    assert_eq!(encoding(&[]), "identity");
}

#[test]
fn compression_problems_are_errors_that_say_which() {
    let body = frame(true, &gzip(b"x"));
    assert_eq!(
        decode_messages(&[], &body, LIMIT),
        Err(DecodeError::Message(MessageError::CompressedWithoutEncoding { index: 0 }))
    );
    let err = decode_messages(&headers(&[("grpc-encoding", "snappy")]), &body, LIMIT).unwrap_err();
    assert_eq!(
        err.to_string(),
        "message 0 is compressed with grpc-encoding \"snappy\", which is not understood"
    );
    let mut two = frame(false, b"ok");
    two.extend(frame(true, b"not gzip at all"));
    let err = decode_messages(&headers(&[("grpc-encoding", "gzip")]), &two, LIMIT).unwrap_err();
    assert!(
        matches!(err, DecodeError::Message(MessageError::Corrupt { index: 1, encoding: "gzip", .. })),
        "{err:?}"
    );
    // An unknown encoding on uncompressed messages does not matter.
    let plain = frame(false, b"x");
    assert!(decode_messages(&headers(&[("grpc-encoding", "snappy")]), &plain, LIMIT).is_ok());
}

#[test]
fn decompression_is_capped_over_the_whole_body() {
    let zeros = vec![0u8; 4 << 20];
    let bomb = frame(true, &gzip(&zeros));
    assert!(bomb.len() < 64 << 10);
    let gz = headers(&[("grpc-encoding", "gzip")]);
    assert_eq!(
        decode_messages(&gz, &bomb, LIMIT),
        Err(DecodeError::Message(MessageError::TooLarge { limit: LIMIT }))
    );
    let deflate = headers(&[("grpc-encoding", "deflate")]);
    let zbomb = frame(true, &zlib(&zeros));
    assert_eq!(
        decode_messages(&deflate, &zbomb, LIMIT),
        Err(DecodeError::Message(MessageError::TooLarge { limit: LIMIT }))
    );
    // Two messages of 600 KiB each pass alone but not together.
    let part = frame(true, &gzip(&zeros[..600 << 10]));
    assert!(decode_messages(&gz, &part, LIMIT).is_ok());
    let mut both = part.clone();
    both.extend(&part);
    assert_eq!(
        decode_messages(&gz, &both, LIMIT),
        Err(DecodeError::Message(MessageError::TooLarge { limit: LIMIT }))
    );
    // Uncompressed messages count too; exactly at the cap is fine.
    let exact = frame(false, &zeros[..LIMIT]);
    assert!(decode_messages(&[], &exact, LIMIT).is_ok());
    let over = frame(false, &zeros[..LIMIT + 1]);
    assert!(decode_messages(&[], &over, LIMIT).is_err());
}

#[test]
fn status_comes_from_trailers_or_a_trailers_only_header_block() {
    let ok =
        read_status(&headers(&[("content-type", "application/grpc")]), &headers(&[("grpc-status", "0")]));
    assert_eq!(ok, Ok(Status { code: Code::OK, message: String::new() }));
    let trailers_only = headers(&[
        ("content-type", "application/grpc"),
        ("grpc-status", "5"),
        ("grpc-message", "model%20m%20not%20found"),
    ]);
    let status = read_status(&trailers_only, &[]).unwrap();
    assert_eq!((status.code, status.message.as_str()), (Code(5), "model m not found"));
    assert_eq!(status.code.to_string(), "5 (NOT_FOUND)");
    // The trailers win over the headers.
    let both = read_status(&headers(&[("grpc-status", "14")]), &headers(&[("grpc-status", "0")])).unwrap();
    assert!(both.is_ok());
    assert_eq!(
        read_status(&headers(&[("content-type", "application/grpc")]), &[]),
        Err(StatusError::Missing)
    );
    assert_eq!(read_status(&headers(&[("grpc-status", "ok")]), &[]), Err(StatusError::Invalid("ok".into())));
    assert_eq!(read_status(&headers(&[("grpc-status", "-1")]), &[]), Err(StatusError::Invalid("-1".into())));
    assert_eq!(
        read_status(&headers(&[("grpc-status", "99999999999")]), &[]),
        Err(StatusError::Invalid("99999999999".into()))
    );
    assert_eq!(Code(99).to_string(), "99");
    assert_eq!(Code(16).name(), Some("UNAUTHENTICATED"));
}

#[test]
fn grpc_message_is_percent_decoded_leniently() {
    assert_eq!(percent_decode(b"plain text"), "plain text");
    assert_eq!(percent_decode(b"100%25 sure"), "100% sure");
    assert_eq!(percent_decode(b"caf%C3%A9"), "café");
    assert_eq!(percent_decode(b"bad %zz and %4"), "bad %zz and %4");
    assert_eq!(percent_decode(b"%FF"), "\u{fffd}");
    assert_eq!(percent_decode(b"%"), "%");
}

proptest! {
    #[test]
    fn arbitrary_bodies_never_panic(body in prop::collection::vec(any::<u8>(), 0..128), enc in prop_oneof![Just("gzip"), Just("deflate"), Just("identity"), Just("zstd")]) {
        let hs = headers(&[("grpc-encoding", enc)]);
        let _ = decode_messages(&hs, &body, 1 << 16);
        if let Ok(frames) = split(&body, MAX_MESSAGES) {
            let total: usize = frames.iter().map(|f| f.payload.len() + 5).sum();
            prop_assert_eq!(total, body.len());
        }
    }

    #[test]
    fn framed_messages_split_back(messages in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8)) {
        let body: Vec<u8> = messages.iter().flat_map(|m| frame(false, m)).collect();
        let frames = split(&body, MAX_MESSAGES).unwrap();
        let got: Vec<&[u8]> = frames.iter().map(|f| f.payload).collect();
        let want: Vec<&[u8]> = messages.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(got, want);
    }

    #[test]
    fn arbitrary_status_headers_never_panic(status in "\\PC{0,12}", message in prop::collection::vec(any::<u8>(), 0..32)) {
        let hs = vec![
            Header { name: "grpc-status".into(), value: Bytes::from(status) },
            Header { name: "grpc-message".into(), value: Bytes::from(message) },
        ];
        let _ = read_status(&hs, &[]);
    }
}
