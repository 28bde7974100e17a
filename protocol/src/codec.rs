//! The frame codec: the one place that turns a [`Frame`] into bytes and bytes into a [`Frame`].
//!
//! The encoding is [postcard](https://docs.rs/postcard) (its wire format is documented and
//! stable): the version as a varint, then the message (variant index as a varint, then its
//! fields in order). Decoding is bounded: input longer than [`MAX_FRAME_BYTES`] is refused
//! before any parsing, every length prefix is checked against the bytes actually present, the
//! types have no recursion, and no input makes it panic (a fuzz target in `protocol/fuzz`
//! checks this).
//!
//! ```
//! use tracevisor_protocol::{decode, encode, CodecError, Frame, Message, PROTOCOL_VERSION};
//!
//! let frame = Frame::new(Message::Heartbeat { seq: 7 });
//! let bytes = encode(&frame)?;
//! let version = PROTOCOL_VERSION as u8;
//! assert_eq!(bytes, [version, 2, 7]); // the version, variant 2 (Heartbeat), seq 7
//! assert_eq!(decode(&bytes)?, frame);
//! assert_eq!(decode(&[version, 2, 7, 0]), Err(CodecError::TrailingBytes { count: 1 }));
//! # Ok::<(), CodecError>(())
//! ```

use crate::{Frame, Message, PROTOCOL_VERSION};

/// The largest frame either side encodes or accepts, in bytes (16 MiB: LAMI results can be
/// large). Also the WebSocket `max_message_size` and `max_frame_size` on both sides.
pub const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The frame is larger than [`MAX_FRAME_BYTES`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// The frame's length.
        len: usize,
        /// The limit ([`MAX_FRAME_BYTES`]).
        max: usize,
    },
    /// The input is empty or ends in the middle of a value.
    #[error("frame is truncated")]
    Truncated,
    /// The frame speaks another protocol version; its body was not decoded.
    #[error("frame has protocol version {got}, this side speaks version {expected}")]
    UnsupportedVersion {
        /// The frame's version.
        got: u16,
        /// [`PROTOCOL_VERSION`].
        expected: u16,
    },
    /// The bytes are not a valid encoding of a frame.
    #[error("malformed frame: {reason}")]
    Malformed {
        /// What is wrong, in a few words.
        reason: &'static str,
    },
    /// A whole frame was decoded but bytes were left after it.
    #[error("frame has {count} trailing bytes")]
    TrailingBytes {
        /// How many bytes were left.
        count: usize,
    },
    /// The frame could not be serialized (never expected with these types).
    #[error("cannot encode frame: {reason}")]
    Encode {
        /// What went wrong, in a few words.
        reason: &'static str,
    },
}

/// Encodes `frame`; refuses a frame whose encoding would exceed [`MAX_FRAME_BYTES`], so a
/// sender never produces what the receiver must reject.
pub fn encode(frame: &Frame) -> Result<Vec<u8>, CodecError> {
    let bytes = postcard::to_stdvec(frame).map_err(|error| CodecError::Encode {
        reason: describe(&error),
    })?;
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    Ok(bytes)
}

/// Decodes one frame that must fill `bytes` exactly. Checks, in order: the size limit, the
/// version (before looking at the body), the body, and that nothing trails it.
pub fn decode(bytes: &[u8]) -> Result<Frame, CodecError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(CodecError::TooLarge {
            len: bytes.len(),
            max: MAX_FRAME_BYTES,
        });
    }
    let (version, rest) = postcard::take_from_bytes::<u16>(bytes).map_err(decode_error)?;
    if version != PROTOCOL_VERSION {
        return Err(CodecError::UnsupportedVersion {
            got: version,
            expected: PROTOCOL_VERSION,
        });
    }
    let (body, rest) = postcard::take_from_bytes::<Message>(rest).map_err(decode_error)?;
    if !rest.is_empty() {
        return Err(CodecError::TrailingBytes { count: rest.len() });
    }
    Ok(Frame { version, body })
}

fn decode_error(error: postcard::Error) -> CodecError {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => CodecError::Truncated,
        other => CodecError::Malformed {
            reason: describe(&other),
        },
    }
}

fn describe(error: &postcard::Error) -> &'static str {
    match error {
        postcard::Error::DeserializeUnexpectedEnd => "unexpected end of input",
        postcard::Error::DeserializeBadVarint => "invalid varint",
        postcard::Error::DeserializeBadBool => "invalid bool",
        postcard::Error::DeserializeBadChar => "invalid char",
        postcard::Error::DeserializeBadUtf8 => "invalid utf-8 in a string",
        postcard::Error::DeserializeBadOption => "invalid option tag",
        postcard::Error::DeserializeBadEnum => "invalid enum variant",
        postcard::Error::SerdeDeCustom => "unknown variant or invalid value",
        postcard::Error::SerializeSeqLengthUnknown => "sequence of unknown length",
        _ => "invalid encoding",
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    use proptest::prelude::*;

    use super::*;
    use crate::{Capabilities, CloseReason, Hello, JobOutcome, JobSpec, TraceOutput};

    fn hello() -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            hostname: "web-1".into(),
            addresses: vec![
                IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7)),
                IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
            ],
            agent_version: "0.1.0".into(),
            capabilities: Capabilities {
                lttng_version: Some("2.13.9".into()),
                sessiond_running: true,
                kernel_tracer: false,
                kernel_tracer_error: Some(
                    "kernel tracer not available (lttng-modules not loaded)".into(),
                ),
                userspace_tracer: true,
                userspace_tracer_error: None,
                babeltrace2: true,
                analyses: vec!["lttng-cputop-mi".into(), "lttng-iousagetop-mi".into()],
                lttng_control: Some("liblttng-ctl 2.13".into()),
            },
            running_jobs: vec![3, 300],
        }
    }

    fn spec() -> JobSpec {
        JobSpec {
            session_name: "tracevisor-job-42".into(),
            analysis: "iousagetop".into(),
            kernel_events: vec!["sched_switch".into(), "block_rq_complete".into()],
            syscalls: true,
            userspace_events: vec!["my_app:*".into()],
            duration_ms: 2_000,
            output: TraceOutput::Relay {
                host: "relay-1".into(),
                ctrl_port: 5342,
                data_port: 5343,
            },
            analysis_commands: vec![vec!["lttng-iousagetop-mi".into(), "{trace}".into()]],
            run_analysis: true,
            summary: crate::Summary::Lami,
            analysis_only: None,
            keep_trace: false,
            snapshot_of: None,
        }
    }

    /// One message of every kind (and every variant of the nested enums).
    fn every_message() -> Vec<Message> {
        let mut local = spec();
        local.output = TraceOutput::Local;
        let mut messages = vec![
            Message::Hello(hello()),
            Message::Hello(Hello {
                capabilities: Capabilities::default(),
                addresses: vec![],
                running_jobs: vec![],
                ..hello()
            }),
            Message::HelloAck {
                agent_id: 7,
                heartbeat_interval_ms: 5_000,
                coordinator_id: "c0ffee00".into(),
            },
            Message::Heartbeat { seq: 0 },
            Message::Heartbeat { seq: u64::MAX },
            Message::HeartbeatAck { seq: 128 },
            Message::StartJob {
                job_id: 42,
                spec: spec(),
            },
            Message::StartJob {
                job_id: 43,
                spec: local,
            },
            Message::CancelJob { job_id: 42 },
            Message::ResultAck { job_id: 42 },
            Message::JobProgress {
                job_id: 42,
                status: crate::JOB_STATUS_TRACE_RUNNING,
                message: "recording for 2 s".into(),
            },
            Message::JobResult {
                job_id: 42,
                outcome: JobOutcome::Ok {
                    result_json: r#"{"results":[]}"#.into(),
                },
            },
            Message::JobResult {
                job_id: 43,
                outcome: JobOutcome::Err {
                    step: "start".into(),
                    message: "lttng exited with status 1: no session daemon".into(),
                },
            },
        ];
        for reason in [
            CloseReason::Shutdown,
            CloseReason::Replaced,
            CloseReason::ProtocolError,
            CloseReason::UnsupportedVersion,
            CloseReason::Unauthorized,
            CloseReason::HeartbeatTimeout,
        ] {
            messages.push(Message::Close {
                reason,
                message: format!("closing: {reason}"),
            });
        }
        messages
    }

    #[test]
    fn every_message_round_trips() {
        for message in every_message() {
            let frame = Frame::new(message);
            let bytes = encode(&frame).unwrap();
            assert_eq!(decode(&bytes), Ok(frame.clone()), "{frame:?}");
        }
    }

    #[test]
    fn every_strict_prefix_is_refused_without_panic() {
        for message in every_message() {
            let bytes = encode(&Frame::new(message)).unwrap();
            for len in 0..bytes.len() {
                let error = decode(&bytes[..len]).unwrap_err();
                // A prefix may happen to end on a valid shorter value (then the frame is
                // still refused as malformed), but never decodes.
                assert!(
                    matches!(error, CodecError::Truncated | CodecError::Malformed { .. }),
                    "prefix {len} of {bytes:?}: {error:?}"
                );
            }
        }
    }

    #[test]
    fn empty_input_is_truncated() {
        assert_eq!(decode(&[]), Err(CodecError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        for message in every_message() {
            let mut bytes = encode(&Frame::new(message)).unwrap();
            bytes.extend_from_slice(&[0, 0xff, 7]);
            assert_eq!(decode(&bytes), Err(CodecError::TrailingBytes { count: 3 }));
        }
    }

    #[test]
    fn oversized_input_is_refused_before_decoding() {
        // A valid frame padded past the limit: refused by size, not by the trailing check.
        let mut bytes = encode(&Frame::new(Message::Heartbeat { seq: 1 })).unwrap();
        bytes.resize(MAX_FRAME_BYTES + 1, 0);
        assert_eq!(
            decode(&bytes),
            Err(CodecError::TooLarge {
                len: MAX_FRAME_BYTES + 1,
                max: MAX_FRAME_BYTES
            })
        );
    }

    #[test]
    fn oversized_frame_is_not_encoded() {
        let frame = Frame::new(Message::JobResult {
            job_id: 1,
            outcome: JobOutcome::Ok {
                result_json: "x".repeat(MAX_FRAME_BYTES),
            },
        });
        assert!(matches!(
            encode(&frame),
            Err(CodecError::TooLarge {
                max: MAX_FRAME_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn frame_at_the_limit_is_accepted() {
        let frame = |len: usize| {
            Frame::new(Message::JobResult {
                job_id: 1,
                outcome: JobOutcome::Ok {
                    result_json: "x".repeat(len),
                },
            })
        };
        // Overhead: version, variant, job id, outcome variant, 4-byte string length varint.
        let overhead = encode(&frame(MAX_FRAME_BYTES / 2)).unwrap().len() - MAX_FRAME_BYTES / 2;
        let bytes = encode(&frame(MAX_FRAME_BYTES - overhead)).unwrap();
        assert_eq!(bytes.len(), MAX_FRAME_BYTES);
        assert_eq!(decode(&bytes).unwrap(), frame(MAX_FRAME_BYTES - overhead));
    }

    #[test]
    fn other_version_is_its_own_error() {
        let mut frame = Frame::new(Message::Heartbeat { seq: 1 });
        frame.version = 1;
        let bytes = encode(&frame).unwrap();
        assert_eq!(
            decode(&bytes),
            Err(CodecError::UnsupportedVersion {
                got: 1,
                expected: PROTOCOL_VERSION
            })
        );
        // The body of another version is not looked at.
        let next = PROTOCOL_VERSION as u8 + 1;
        assert_eq!(
            decode(&[next, 0xff, 0xff]),
            Err(CodecError::UnsupportedVersion {
                got: u16::from(next),
                expected: PROTOCOL_VERSION
            })
        );
    }

    #[test]
    fn unknown_variant_is_malformed() {
        // This version, message variant 200 (never defined).
        assert!(matches!(
            decode(&[PROTOCOL_VERSION as u8, 200, 1]),
            Err(CodecError::Malformed { .. })
        ));
    }

    #[test]
    fn huge_length_prefix_does_not_allocate() {
        // This version, Close, reason Shutdown, a string claiming u64::MAX-ish bytes.
        let bytes = [
            PROTOCOL_VERSION as u8,
            4,
            0,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x01,
        ];
        assert!(decode(&bytes).is_err());
        // This version, Hello, hostname claiming 1 TiB.
        let mut bytes = vec![PROTOCOL_VERSION as u8, 0, 1];
        bytes.extend_from_slice(&[0x80, 0x80, 0x80, 0x80, 0x80, 0x20]);
        assert_eq!(decode(&bytes), Err(CodecError::Truncated));
    }

    #[test]
    fn invalid_utf8_is_malformed() {
        // This version, Close, Shutdown, a 1-byte string holding 0xff.
        assert_eq!(
            decode(&[PROTOCOL_VERSION as u8, 4, 0, 1, 0xff]),
            Err(CodecError::Malformed {
                reason: "invalid utf-8 in a string"
            })
        );
    }

    #[test]
    fn error_messages_are_lowercase_without_period() {
        let errors = [
            CodecError::TooLarge { len: 2, max: 1 },
            CodecError::Truncated,
            CodecError::UnsupportedVersion {
                got: 2,
                expected: 1,
            },
            CodecError::Malformed { reason: "x" },
            CodecError::TrailingBytes { count: 1 },
            CodecError::Encode { reason: "x" },
        ];
        for error in errors {
            let text = error.to_string();
            assert!(text.starts_with(|c: char| c.is_lowercase()), "{text}");
            assert!(!text.ends_with('.'), "{text}");
        }
    }

    /// The exact bytes of fixed frames: a change here is a wire-format change, which needs a
    /// new [`PROTOCOL_VERSION`] unless it only appends enum variants.
    #[test]
    fn golden_bytes() {
        let cases: Vec<(Message, &str)> = vec![
            (
                Message::HelloAck {
                    agent_id: 7,
                    heartbeat_interval_ms: 5_000,
                    coordinator_id: "c0ffee00".into(),
                },
                "04 01 07 88 27 08 63 30 66 66 65 65 30 30",
            ),
            (Message::Heartbeat { seq: 300 }, "04 02 ac 02"),
            (Message::HeartbeatAck { seq: 0 }, "04 03 00"),
            (
                Message::Close {
                    reason: CloseReason::Replaced,
                    message: "new link".into(),
                },
                "04 04 01 08 6e 65 77 20 6c 69 6e 6b",
            ),
            (Message::CancelJob { job_id: 42 }, "04 06 2a"),
            (Message::ResultAck { job_id: 42 }, "04 07 2a"),
            (
                Message::Enroll {
                    hostname: "web-1".into(),
                },
                "04 0a 05 77 65 62 2d 31",
            ),
            (
                Message::Enrolled {
                    hostname: "h".into(),
                    credential: "c".into(),
                },
                "04 0b 01 68 01 63",
            ),
            (
                Message::JobProgress {
                    job_id: 42,
                    status: -1,
                    message: "x".into(),
                },
                "04 08 2a ff 01 78",
            ),
            (
                Message::JobResult {
                    job_id: 42,
                    outcome: JobOutcome::Err {
                        step: "start".into(),
                        message: "no".into(),
                    },
                },
                "04 09 2a 01 05 73 74 61 72 74 02 6e 6f",
            ),
            (
                Message::FetchTrace {
                    fetch_id: 1,
                    path: "/t".into(),
                    window: 300,
                },
                "04 0c 01 02 2f 74 ac 02",
            ),
            (
                Message::TraceStart {
                    fetch_id: 1,
                    bytes: 5,
                    files: 2,
                },
                "04 0d 01 05 02",
            ),
            (
                Message::TraceChunk {
                    fetch_id: 1,
                    data: vec![0xab, 0xcd],
                },
                "04 0e 01 02 ab cd",
            ),
            (
                Message::TraceCredit {
                    fetch_id: 1,
                    bytes: 300,
                },
                "04 0f 01 ac 02",
            ),
            (
                Message::TraceEnd {
                    fetch_id: 1,
                    error: Some(crate::FetchError {
                        gone: true,
                        message: "x".into(),
                    }),
                },
                "04 10 01 01 01 01 78",
            ),
            (Message::CancelFetch { fetch_id: 1 }, "04 11 01"),
            (
                Message::ArmRecorders {
                    owner: "o".into(),
                    recorders: vec![crate::RecorderSpec {
                        session_name: "s".into(),
                        kernel_events: Vec::new(),
                        syscalls: false,
                        userspace_events: vec!["u".into()],
                        buffer_bytes: 300,
                    }],
                },
                "04 12 01 6f 01 01 73 00 00 01 01 75 ac 02",
            ),
            (
                Message::RecordersArmed {
                    states: vec![crate::RecorderState {
                        session_name: "s".into(),
                        error: None,
                    }],
                },
                "04 13 01 01 73 00",
            ),
            (Message::Hello(hello()), GOLDEN_HELLO),
            (
                Message::StartJob {
                    job_id: 42,
                    spec: spec(),
                },
                GOLDEN_START_JOB,
            ),
        ];
        for (message, expected) in cases {
            let bytes = encode(&Frame::new(message.clone())).unwrap();
            assert_eq!(hex(&bytes), expected, "{message:?}");
        }
    }

    const GOLDEN_HELLO: &str = "04 00 04 05 77 65 62 2d 31 02 00 c0 00 02 07 01 20 01 0d b8 00 00 00 00 00 00 00 00 00 00 00 01 05 30 2e 31 2e 30 01 06 32 2e 31 33 2e 39 01 00 01 36 6b 65 72 6e 65 6c 20 74 72 61 63 65 72 20 6e 6f 74 20 61 76 61 69 6c 61 62 6c 65 20 28 6c 74 74 6e 67 2d 6d 6f 64 75 6c 65 73 20 6e 6f 74 20 6c 6f 61 64 65 64 29 01 00 01 02 0f 6c 74 74 6e 67 2d 63 70 75 74 6f 70 2d 6d 69 13 6c 74 74 6e 67 2d 69 6f 75 73 61 67 65 74 6f 70 2d 6d 69 01 11 6c 69 62 6c 74 74 6e 67 2d 63 74 6c 20 32 2e 31 33 02 03 ac 02";
    const GOLDEN_START_JOB: &str = "04 05 2a 11 74 72 61 63 65 76 69 73 6f 72 2d 6a 6f 62 2d 34 32 0a 69 6f 75 73 61 67 65 74 6f 70 02 0c 73 63 68 65 64 5f 73 77 69 74 63 68 11 62 6c 6f 63 6b 5f 72 71 5f 63 6f 6d 70 6c 65 74 65 01 01 08 6d 79 5f 61 70 70 3a 2a d0 0f 01 07 72 65 6c 61 79 2d 31 de 29 df 29 01 02 13 6c 74 74 6e 67 2d 69 6f 75 73 61 67 65 74 6f 70 2d 6d 69 07 7b 74 72 61 63 65 7d 01 00 00 00 00";

    fn hex(bytes: &[u8]) -> String {
        bytes
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    }

    proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn random_bytes_after_a_valid_header_never_panic(
            variant in 0u8..22,
            bytes in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let mut input = vec![PROTOCOL_VERSION as u8, variant];
            input.extend_from_slice(&bytes);
            if let Ok(frame) = decode(&input) {
                // Whatever decodes encodes and decodes back to itself.
                prop_assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
            }
        }

        #[test]
        fn mutated_frames_never_panic(
            index in 0usize..19,
            flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        ) {
            let messages = every_message();
            let mut bytes = encode(&Frame::new(messages[index % messages.len()].clone())).unwrap();
            for (position, value) in flips {
                let len = bytes.len();
                bytes[position % len] ^= value;
            }
            let _ = decode(&bytes);
        }

        #[test]
        fn heartbeats_round_trip(seq in any::<u64>()) {
            let frame = Frame::new(Message::Heartbeat { seq });
            prop_assert_eq!(decode(&encode(&frame).unwrap()).unwrap(), frame);
        }
    }
}
