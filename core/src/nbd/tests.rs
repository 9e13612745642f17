//! Scripted-client tests of the handshake and transmission phases, every refusal and fatal
//! error, and property tests for split input, bounded buffers and request round trips.

use proptest::prelude::*;

use super::consts::*;
use super::testclient::*;
use super::*;

const MIB: u64 = 1 << 20;

fn volume(size: u64) -> Export {
    let mut export = Export::new("vol", size);
    export.description = "the test volume".into();
    export
}

fn catalogue() -> Catalogue {
    Catalogue::new(vec![volume(MIB), Export::new("other", 4096)]).unwrap()
}

fn transmitting(export: Export) -> Harness {
    let name = export.name.clone();
    Harness::go(Catalogue::new(vec![export]).unwrap(), &name)
}

fn fixed_no_zeroes() -> Vec<u8> {
    client_flags(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)
}

fn closed_with(conn: &NbdConnection) -> ProtocolError {
    match conn.state() {
        State::Closed {
            reason: CloseReason::Protocol(error),
        } => error,
        other => panic!("expected a protocol error, state is {other:?}"),
    }
}

fn rejections(conn: &mut NbdConnection) -> Vec<Rejection> {
    conn.take_rejections().0
}

// ---- Handshake -----------------------------------------------------------------------------

#[test]
fn greeting_is_nbdmagic_ihaveopt_and_flags() {
    let mut conn = NbdConnection::new(catalogue());
    let out = conn.take_output();
    assert_eq!(&out[..8], b"NBDMAGIC");
    assert_eq!(&out[8..16], b"IHAVEOPT");
    assert_eq!(out[16..], [0, 3]);
    assert_eq!(conn.state(), State::Handshaking);
    assert!(conn.take_output().is_empty());
}

#[test]
fn export_name_sends_size_flags_and_zeroes() {
    let mut h = Harness::new(catalogue());
    h.send(&client_flags(NBD_FLAG_C_FIXED_NEWSTYLE));
    h.send(&option(NBD_OPT_EXPORT_NAME, b"vol"));
    assert_eq!(h.server.u64(), MIB);
    let flags = h.server.u16();
    let expected = NBD_FLAG_HAS_FLAGS
        | NBD_FLAG_SEND_FLUSH
        | NBD_FLAG_SEND_FUA
        | NBD_FLAG_SEND_TRIM
        | NBD_FLAG_SEND_WRITE_ZEROES;
    assert_eq!(flags, expected);
    assert_eq!(
        h.server.take(EXPORT_NAME_ZEROES),
        vec![0; EXPORT_NAME_ZEROES]
    );
    assert_eq!(h.server.remaining(), 0);
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "vol".into()
        }
    );
    assert_eq!(h.conn.export().map(|e| e.size), Some(MIB));
}

#[test]
fn export_name_with_no_zeroes_omits_them() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_EXPORT_NAME, b"other"));
    assert_eq!(h.server.u64(), 4096);
    h.server.u16();
    assert_eq!(h.server.remaining(), 0);
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "other".into()
        }
    );
}

#[test]
fn client_without_fixed_newstyle_flag_is_served() {
    let mut h = Harness::new(catalogue());
    h.send(&client_flags(0));
    h.send(&option(NBD_OPT_EXPORT_NAME, b"vol"));
    assert_eq!(h.server.remaining(), 8 + 2 + EXPORT_NAME_ZEROES);
}

#[test]
fn export_name_unknown_closes_with_named_error() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_EXPORT_NAME, b"nope"));
    assert_eq!(h.server.remaining(), 0);
    let error = closed_with(&h.conn);
    assert_eq!(
        error,
        ProtocolError::UnknownExport {
            at: 4,
            name: "nope".into()
        }
    );
    assert!(
        error.to_string().contains("no export named \"nope\""),
        "{error}"
    );
    assert!(h.conn.is_finished());
}

#[test]
fn export_name_too_long_closes_and_quotes_a_shortened_name() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_EXPORT_NAME, "é".repeat(3000).as_bytes()));
    let ProtocolError::UnknownExport { name, .. } = closed_with(&h.conn) else {
        panic!("expected UnknownExport");
    };
    assert!(name.ends_with("...") && name.len() < 300, "{name}");
}

#[test]
fn list_sends_one_server_reply_per_export_then_ack() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_LIST, &[]));
    let first = h.server.opt_reply();
    assert_eq!(
        (first.option, first.reply_type),
        (NBD_OPT_LIST, NBD_REP_SERVER)
    );
    assert_eq!(&first.data[..4], &3u32.to_be_bytes());
    assert_eq!(&first.data[4..7], b"vol");
    assert_eq!(&first.data[7..], b"the test volume");
    let second = h.server.opt_reply();
    assert_eq!(second.data, [&5u32.to_be_bytes()[..], b"other"].concat());
    let ack = h.server.opt_reply();
    assert_eq!((ack.reply_type, ack.data.len()), (NBD_REP_ACK, 0));
    assert_eq!(h.server.remaining(), 0);
    assert_eq!(h.conn.state(), State::Handshaking);
}

#[test]
fn list_with_data_is_invalid_and_negotiation_continues() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_LIST, b"x"));
    let reply = h.server.opt_reply();
    assert_eq!(reply.reply_type, NBD_REP_ERR_INVALID);
    assert!(
        reply.text().contains("NBD_OPT_LIST carries no data"),
        "{}",
        reply.text()
    );
    h.send(&option(NBD_OPT_LIST, &[]));
    assert_eq!(h.server.opt_reply().reply_type, NBD_REP_SERVER);
}

/// Reads INFO/GO replies up to the final one; returns the infos by type and the final reply.
fn info_replies(h: &mut Harness, option: u32) -> (Vec<(u16, Vec<u8>)>, OptReply) {
    let mut infos = Vec::new();
    loop {
        let reply = h.server.opt_reply();
        assert_eq!(reply.option, option);
        if reply.reply_type != NBD_REP_INFO {
            return (infos, reply);
        }
        infos.push((reply.info_type(), reply.data[2..].to_vec()));
    }
}

#[test]
fn info_then_go_describe_the_export_and_go_enters_transmission() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    let wanted = [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE];
    h.send(&option(NBD_OPT_INFO, &info_data("vol", &wanted)));
    let (infos, last) = info_replies(&mut h, NBD_OPT_INFO);
    assert_eq!(last.reply_type, NBD_REP_ACK);
    let flags = Export::new("x", 0).transmission_flags();
    let export_info = [&MIB.to_be_bytes()[..], &flags.to_be_bytes()].concat();
    let sizes = [1u32, 4096, 32 << 20].map(u32::to_be_bytes).concat();
    let expected = vec![
        (NBD_INFO_EXPORT, export_info),
        (NBD_INFO_NAME, b"vol".to_vec()),
        (NBD_INFO_DESCRIPTION, b"the test volume".to_vec()),
        (NBD_INFO_BLOCK_SIZE, sizes),
    ];
    assert_eq!(infos, expected);
    assert_eq!(h.conn.state(), State::Handshaking);

    h.send(&option(NBD_OPT_GO, &info_data("vol", &wanted)));
    let (go_infos, last) = info_replies(&mut h, NBD_OPT_GO);
    assert_eq!((last.reply_type, go_infos), (NBD_REP_ACK, expected));
    assert_eq!(h.server.remaining(), 0, "no zeroes after GO");
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "vol".into()
        }
    );
}

#[test]
fn go_without_requests_still_sends_export_and_block_size() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(
        NBD_OPT_GO,
        &info_data("other", &[99, NBD_INFO_EXPORT]),
    ));
    let (infos, last) = info_replies(&mut h, NBD_OPT_GO);
    assert_eq!(last.reply_type, NBD_REP_ACK);
    let types: Vec<u16> = infos.iter().map(|(t, _)| *t).collect();
    assert_eq!(types, [NBD_INFO_EXPORT, NBD_INFO_BLOCK_SIZE]);
}

#[test]
fn go_unknown_export_is_refused_and_a_retry_succeeds() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_GO, &info_data("nope", &[])));
    let reply = h.server.opt_reply();
    assert_eq!(
        (reply.option, reply.reply_type),
        (NBD_OPT_GO, NBD_REP_ERR_UNKNOWN)
    );
    assert!(
        reply.text().contains("no export named \"nope\""),
        "{}",
        reply.text()
    );
    let refusal = OptionRefusal::UnknownExport {
        option: NBD_OPT_GO,
        name: "nope".into(),
    };
    assert_eq!(rejections(&mut h.conn), vec![Rejection::Option(refusal)]);
    assert_eq!(h.conn.state(), State::Handshaking);
    h.send(&option(NBD_OPT_GO, &info_data("vol", &[])));
    assert_eq!(info_replies(&mut h, NBD_OPT_GO).1.reply_type, NBD_REP_ACK);
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "vol".into()
        }
    );
}

#[test]
fn empty_name_selects_the_default_export() {
    let catalogue = catalogue().with_default("other").unwrap();
    let mut h = Harness::new(catalogue);
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_GO, &info_data("", &[NBD_INFO_NAME])));
    let (infos, last) = info_replies(&mut h, NBD_OPT_GO);
    assert_eq!(last.reply_type, NBD_REP_ACK);
    assert!(infos.contains(&(NBD_INFO_NAME, b"other".to_vec())));
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "other".into()
        }
    );
}

#[test]
fn empty_name_without_default_is_unknown() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_INFO, &info_data("", &[])));
    assert_eq!(h.server.opt_reply().reply_type, NBD_REP_ERR_UNKNOWN);
}

#[test]
fn abort_is_acknowledged_then_closed() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_ABORT, b"ignored"));
    let ack = h.server.opt_reply();
    assert_eq!((ack.option, ack.reply_type), (NBD_OPT_ABORT, NBD_REP_ACK));
    assert_eq!(
        h.conn.state(),
        State::Closed {
            reason: CloseReason::Aborted
        }
    );
    assert!(h.conn.is_finished());
    assert_eq!(h.conn.receive(b"more bytes are discarded"), 24);
    h.pull();
    assert_eq!(h.server.remaining(), 0);
}

#[test]
fn unsupported_options_get_err_unsup_and_negotiation_continues() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    let options = [
        NBD_OPT_STRUCTURED_REPLY,
        NBD_OPT_STARTTLS,
        NBD_OPT_PEEK_EXPORT,
        NBD_OPT_LIST_META_CONTEXT,
        NBD_OPT_SET_META_CONTEXT,
        NBD_OPT_EXTENDED_HEADERS,
        0,
        0xdead_beef,
    ];
    for opt in options {
        h.send(&option(opt, b"whatever data"));
        let reply = h.server.opt_reply();
        assert_eq!((reply.option, reply.reply_type), (opt, NBD_REP_ERR_UNSUP));
        assert!(
            reply.text().contains("is not supported"),
            "{}",
            reply.text()
        );
    }
    assert_eq!(rejections(&mut h.conn).len(), options.len());
    assert_eq!(h.conn.state(), State::Handshaking);
    h.send(&option(NBD_OPT_GO, &info_data("vol", &[])));
    assert_eq!(info_replies(&mut h, NBD_OPT_GO).1.reply_type, NBD_REP_ACK);
}

#[test]
fn structured_reply_refusal_names_the_option() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_STRUCTURED_REPLY, &[]));
    let text = h.server.opt_reply().text();
    assert_eq!(
        text,
        "option 8 (NBD_OPT_STRUCTURED_REPLY) is not supported by this server"
    );
}

#[test]
fn malformed_info_requests_are_invalid() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (vec![0, 0, 0], "shorter than 6 bytes"),
        (
            [&100u32.to_be_bytes()[..], b"vol", &[0, 0]].concat(),
            "exceeds the option data",
        ),
        (
            [&3u32.to_be_bytes()[..], b"vol", &[0, 2, 0, 1]].concat(),
            "count does not match",
        ),
        (
            [&3u32.to_be_bytes()[..], b"vol", &[0, 0, 9]].concat(),
            "count does not match",
        ),
    ];
    for (data, why) in cases {
        let mut h = Harness::new(catalogue());
        h.send(&fixed_no_zeroes());
        h.send(&option(NBD_OPT_GO, &data));
        let reply = h.server.opt_reply();
        assert_eq!(reply.reply_type, NBD_REP_ERR_INVALID, "{why}");
        assert!(reply.text().contains(why), "{} / {why}", reply.text());
        assert_eq!(h.conn.state(), State::Handshaking);
    }
}

#[test]
fn over_long_export_name_in_go_is_invalid() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    let name = "n".repeat(MAX_STRING_LEN + 1);
    h.send(&option(NBD_OPT_GO, &info_data(&name, &[])));
    let reply = h.server.opt_reply();
    assert_eq!(reply.reply_type, NBD_REP_ERR_INVALID);
    assert!(
        reply.text().contains("longer than 4096"),
        "{}",
        reply.text()
    );
}

#[test]
fn oversized_option_closes_with_a_clear_error() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    let mut header = IHAVEOPT.to_be_bytes().to_vec();
    header.extend_from_slice(&NBD_OPT_GO.to_be_bytes());
    header.extend_from_slice(&70_000u32.to_be_bytes());
    h.send(&header);
    let error = closed_with(&h.conn);
    let text = error.to_string();
    assert_eq!(
        text,
        "option 7 (NBD_OPT_GO) at byte 4: length 70000 exceeds 65536"
    );
    assert!(h.conn.is_finished());
}

#[test]
fn bad_option_magic_closes() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&[0u8; OPTION_HEADER_LEN]);
    assert_eq!(
        closed_with(&h.conn),
        ProtocolError::BadOptionMagic { at: 4, found: 0 }
    );
}

#[test]
fn unknown_client_flags_close() {
    let mut h = Harness::new(catalogue());
    h.send(&client_flags(NBD_FLAG_C_FIXED_NEWSTYLE | 0x10));
    let error = closed_with(&h.conn);
    assert_eq!(
        error,
        ProtocolError::UnknownClientFlags {
            at: 0,
            flags: 0x11,
            unknown: 0x10
        }
    );
    assert!(
        error.to_string().contains("unknown bits 0x00000010"),
        "{error}"
    );
}

#[test]
fn garbage_handshake_closes_with_a_named_error() {
    let mut h = Harness::new(catalogue());
    h.send(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n");
    assert!(matches!(
        closed_with(&h.conn),
        ProtocolError::UnknownClientFlags { at: 0, .. }
    ));
    assert_eq!(h.server.remaining(), 0);

    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    h.send(b"SSH-2.0-OpenSSH_9.6\r\n");
    assert!(matches!(
        closed_with(&h.conn),
        ProtocolError::BadOptionMagic { at: 4, .. }
    ));
}

#[test]
fn too_many_options_close() {
    let mut h = Harness::new(catalogue());
    h.send(&fixed_no_zeroes());
    for _ in 0..MAX_OPTIONS {
        h.send(&option(NBD_OPT_LIST, &[]));
    }
    assert_eq!(h.conn.state(), State::Handshaking);
    h.send(&option(NBD_OPT_LIST, &[]));
    let error = closed_with(&h.conn);
    assert!(matches!(
        error,
        ProtocolError::TooManyOptions {
            limit: MAX_OPTIONS,
            ..
        }
    ));
}

fn strict_catalogue() -> Catalogue {
    let mut export = volume(MIB);
    export.block_sizes = BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 1 << 20,
    };
    export.require_block_size = true;
    Catalogue::new(vec![export]).unwrap()
}

#[test]
fn block_size_required_refuses_go_without_the_request() {
    let mut h = Harness::new(strict_catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_INFO, &info_data("vol", &[])));
    assert_eq!(info_replies(&mut h, NBD_OPT_INFO).1.reply_type, NBD_REP_ACK);
    h.send(&option(NBD_OPT_GO, &info_data("vol", &[])));
    let (infos, last) = info_replies(&mut h, NBD_OPT_GO);
    assert_eq!(last.reply_type, NBD_REP_ERR_BLOCK_SIZE_REQD);
    let sizes = [512u32, 4096, 1 << 20].map(u32::to_be_bytes).concat();
    assert_eq!(infos, vec![(NBD_INFO_BLOCK_SIZE, sizes)]);
    h.send(&option(
        NBD_OPT_GO,
        &info_data("vol", &[NBD_INFO_BLOCK_SIZE]),
    ));
    assert_eq!(info_replies(&mut h, NBD_OPT_GO).1.reply_type, NBD_REP_ACK);
    assert_eq!(
        h.conn.state(),
        State::Transmitting {
            export: "vol".into()
        }
    );
}

#[test]
fn block_size_required_closes_export_name() {
    let mut h = Harness::new(strict_catalogue());
    h.send(&fixed_no_zeroes());
    h.send(&option(NBD_OPT_EXPORT_NAME, b"vol"));
    let error = closed_with(&h.conn);
    assert_eq!(
        error,
        ProtocolError::BlockSizeRequired {
            at: 4,
            name: "vol".into()
        }
    );
}

#[test]
fn handshake_fed_one_byte_at_a_time_matches_whole() {
    let script = [
        fixed_no_zeroes(),
        option(NBD_OPT_LIST, &[]),
        option(NBD_OPT_STRUCTURED_REPLY, &[]),
        option(NBD_OPT_INFO, &info_data("vol", &[NBD_INFO_NAME])),
        option(NBD_OPT_GO, &info_data("vol", &[])),
        encode_request(&Request::Read {
            cookie: 1,
            offset: 0,
            length: 512,
        }),
    ]
    .concat();
    let mut whole = NbdConnection::new(catalogue());
    assert_eq!(whole.receive(&script), script.len());
    let mut split = NbdConnection::new(catalogue());
    let mut split_out = Vec::new();
    for byte in &script {
        assert_eq!(split.receive(std::slice::from_ref(byte)), 1);
        split_out.extend(split.take_output());
    }
    assert_eq!(split_out, whole.take_output());
    assert_eq!(split.state(), whole.state());
    let read = Some(Request::Read {
        cookie: 1,
        offset: 0,
        length: 512,
    });
    assert_eq!(
        (split.next_request(), whole.next_request()),
        (read.clone(), read)
    );
    assert_eq!((split.next_request(), whole.next_request()), (None, None));
}

#[test]
fn pipelined_handshake_and_a_large_write_fit_in_one_receive() {
    let data = vec![0x5a; 1 << 20];
    let write = Request::Write {
        cookie: 1,
        offset: 0,
        data,
        fua: false,
    };
    let stream = [handshake_script(), encode_request(&write)].concat();
    assert!(stream.len() > OPTION_HEADER_LEN + MAX_OPTION_LEN as usize);
    let mut conn = NbdConnection::new(Catalogue::new(vec![prop_export()]).unwrap());
    assert_eq!(conn.receive(&stream), stream.len());
    assert_eq!(conn.next_request(), Some(write));
}

// ---- Transmission: round trips -------------------------------------------------------------

#[test]
fn read_round_trip() {
    let mut h = transmitting(volume(MIB));
    h.send(&encode_request(&Request::Read {
        cookie: 7,
        offset: 4096,
        length: 8,
    }));
    let request = h.conn.next_request();
    assert_eq!(
        request,
        Some(Request::Read {
            cookie: 7,
            offset: 4096,
            length: 8
        })
    );
    assert_eq!(h.conn.next_request(), None);
    h.conn.reply(7, Ok(b"abcdefgh")).unwrap();
    h.pull();
    let reply = h.server.simple_reply(8);
    assert_eq!(
        reply,
        SimpleReply {
            error: 0,
            cookie: 7,
            data: b"abcdefgh".to_vec()
        }
    );
    assert_eq!(h.server.remaining(), 0);
    assert_eq!(h.conn.pending_requests(), 0);
}

#[test]
fn write_round_trip_with_and_without_fua() {
    let mut h = transmitting(volume(MIB));
    for (cookie, fua) in [(1, false), (2, true)] {
        let write = Request::Write {
            cookie,
            offset: 512,
            data: vec![cookie as u8; 100],
            fua,
        };
        h.send(&encode_request(&write));
        assert_eq!(h.conn.next_request(), Some(write));
        h.conn.reply(cookie, Ok(&[])).unwrap();
        h.pull();
        let reply = h.server.simple_reply(0);
        assert_eq!((reply.error, reply.cookie), (0, cookie));
    }
    assert_eq!(h.conn.buffered_bytes(), 0);
}

#[test]
fn flush_trim_and_write_zeroes_round_trip() {
    let mut export = volume(MIB);
    export.can_fast_zero = true;
    let mut h = transmitting(export);
    let requests = [
        Request::Flush { cookie: 1 },
        Request::Trim {
            cookie: 2,
            offset: 0,
            length: 4096,
            fua: true,
        },
        Request::WriteZeroes {
            cookie: 3,
            offset: 4096,
            length: 8192,
            fua: true,
            no_hole: true,
            fast: false,
        },
        Request::WriteZeroes {
            cookie: 4,
            offset: 0,
            length: 512,
            fua: false,
            no_hole: false,
            fast: true,
        },
    ];
    for request in &requests {
        h.send(&encode_request(request));
    }
    for request in &requests {
        assert_eq!(h.conn.next_request().as_ref(), Some(request));
    }
    h.conn.reply(4, Err(Errno::NotSup)).unwrap();
    for cookie in 1..=3 {
        h.conn.reply(cookie, Ok(&[])).unwrap();
    }
    h.pull();
    assert_eq!(
        h.server.simple_reply(0),
        SimpleReply {
            error: NBD_ENOTSUP,
            cookie: 4,
            data: vec![]
        }
    );
    for cookie in 1..=3 {
        assert_eq!(h.server.simple_reply(0).cookie, cookie);
    }
}

#[test]
fn fua_on_read_and_flush_is_accepted_and_ignored() {
    let mut h = transmitting(volume(MIB));
    h.send(&raw_request(NBD_CMD_FLAG_FUA, NBD_CMD_READ, 1, 0, 512));
    h.send(&raw_request(NBD_CMD_FLAG_FUA, NBD_CMD_FLUSH, 2, 0, 0));
    assert_eq!(
        h.conn.next_request(),
        Some(Request::Read {
            cookie: 1,
            offset: 0,
            length: 512
        })
    );
    assert_eq!(h.conn.next_request(), Some(Request::Flush { cookie: 2 }));
}

#[test]
fn replies_may_come_out_of_order() {
    let mut h = transmitting(volume(MIB));
    for cookie in 1..=3u64 {
        h.send(&encode_request(&Request::Read {
            cookie,
            offset: 0,
            length: 4,
        }));
    }
    while h.conn.next_request().is_some() {}
    h.conn.reply(3, Ok(b"cccc")).unwrap();
    h.conn.reply(1, Err(Errno::Io)).unwrap();
    h.conn.reply(2, Ok(b"bbbb")).unwrap();
    h.pull();
    assert_eq!(h.server.simple_reply(4).data, b"cccc");
    assert_eq!(
        h.server.simple_reply(4),
        SimpleReply {
            error: NBD_EIO,
            cookie: 1,
            data: vec![]
        }
    );
    assert_eq!(h.server.simple_reply(4).data, b"bbbb");
    assert_eq!(h.server.remaining(), 0);
}

#[test]
fn disconnect_finishes_outstanding_requests_then_closes() {
    let mut h = transmitting(volume(MIB));
    h.send(&encode_request(&Request::Read {
        cookie: 9,
        offset: 0,
        length: 2,
    }));
    h.send(
        &[
            encode_request(&Request::Disconnect),
            b"trailing garbage".to_vec(),
        ]
        .concat(),
    );
    assert_eq!(
        h.conn.state(),
        State::Closed {
            reason: CloseReason::Disconnected
        }
    );
    assert_eq!(
        h.conn.next_request(),
        Some(Request::Read {
            cookie: 9,
            offset: 0,
            length: 2
        })
    );
    assert_eq!(h.conn.next_request(), Some(Request::Disconnect));
    assert_eq!(h.conn.next_request(), None);
    assert!(!h.conn.is_finished(), "the read is still outstanding");
    h.conn.reply(9, Ok(b"ok")).unwrap();
    assert!(h.conn.is_finished());
    h.pull();
    assert_eq!(h.server.simple_reply(2).data, b"ok");
    assert_eq!(h.server.remaining(), 0);
}

#[test]
fn duplicate_cookies_are_answered_first_in_first_out() {
    let mut h = transmitting(volume(MIB));
    h.send(&encode_request(&Request::Read {
        cookie: 5,
        offset: 0,
        length: 1,
    }));
    h.send(&encode_request(&Request::Flush { cookie: 5 }));
    while h.conn.next_request().is_some() {}
    h.conn.reply(5, Ok(b"r")).unwrap();
    h.conn.reply(5, Ok(&[])).unwrap();
    assert_eq!(
        h.conn.reply(5, Ok(&[])),
        Err(ReplyError::UnknownCookie { cookie: 5 })
    );
}

// ---- Transmission: refusals ----------------------------------------------------------------

/// Sends `bytes`, expects no request for the shim and a simple error reply.
fn expect_refusal(h: &mut Harness, bytes: &[u8], cookie: u64, errno: Errno) -> RequestError {
    h.send(bytes);
    assert_eq!(h.conn.next_request(), None);
    let reply = h.server.simple_reply(0);
    assert_eq!((reply.error, reply.cookie), (errno.code(), cookie));
    assert_eq!(h.server.remaining(), 0);
    let mut found = rejections(&mut h.conn);
    assert_eq!(found.len(), 1);
    match found.pop() {
        Some(Rejection::Request(error)) => {
            assert_eq!((error.cookie(), error.errno()), (cookie, errno));
            error
        }
        other => panic!("expected a request rejection, got {other:?}"),
    }
}

/// After a refusal the stream is still in sync: a read goes through.
fn still_in_sync(h: &mut Harness) {
    h.send(&encode_request(&Request::Read {
        cookie: 0xabc,
        offset: 0,
        length: 512,
    }));
    assert_eq!(
        h.conn.next_request(),
        Some(Request::Read {
            cookie: 0xabc,
            offset: 0,
            length: 512
        })
    );
}

#[test]
fn unknown_commands_get_einval() {
    let mut h = transmitting(volume(MIB));
    for command in [
        NBD_CMD_CACHE,
        NBD_CMD_BLOCK_STATUS,
        NBD_CMD_RESIZE,
        99,
        u16::MAX,
    ] {
        let error = expect_refusal(&mut h, &raw_request(0, command, 1, 0, 512), 1, Errno::Inval);
        assert_eq!(error, RequestError::UnknownCommand { cookie: 1, command });
    }
    still_in_sync(&mut h);
}

#[test]
fn inapplicable_or_unnegotiated_flags_get_einval() {
    let mut no_fua = volume(MIB);
    no_fua.can_fua = false;
    let cases = [
        (volume(MIB), NBD_CMD_FLAG_DF, NBD_CMD_READ, NBD_CMD_FLAG_DF),
        (
            volume(MIB),
            NBD_CMD_FLAG_NO_HOLE,
            NBD_CMD_TRIM,
            NBD_CMD_FLAG_NO_HOLE,
        ),
        (
            volume(MIB),
            NBD_CMD_FLAG_FAST_ZERO,
            NBD_CMD_WRITE_ZEROES,
            NBD_CMD_FLAG_FAST_ZERO,
        ),
        (volume(MIB), 0x8001, NBD_CMD_READ, 0x8000),
        (no_fua, NBD_CMD_FLAG_FUA, NBD_CMD_TRIM, NBD_CMD_FLAG_FUA),
    ];
    for (export, flags, command, invalid) in cases {
        let mut h = transmitting(export);
        let bytes = raw_request(flags, command, 3, 0, 512);
        let error = expect_refusal(&mut h, &bytes, 3, Errno::Inval);
        assert_eq!(
            error,
            RequestError::InvalidFlags {
                cookie: 3,
                command,
                flags,
                invalid
            }
        );
        still_in_sync(&mut h);
    }
}

#[test]
fn write_with_invalid_flag_has_its_payload_skipped() {
    let mut h = transmitting(volume(MIB));
    let mut bytes = raw_request(NBD_CMD_FLAG_NO_HOLE, NBD_CMD_WRITE, 4, 0, 16);
    bytes.extend_from_slice(&[0x25; 16]); // looks like a request magic if misparsed
    expect_refusal(&mut h, &bytes, 4, Errno::Inval);
    still_in_sync(&mut h);
}

#[test]
fn unadvertised_commands_get_einval() {
    let mut export = volume(MIB);
    (export.can_flush, export.can_trim, export.can_write_zeroes) = (false, false, false);
    let mut h = transmitting(export);
    for (command, length) in [
        (NBD_CMD_FLUSH, 0),
        (NBD_CMD_TRIM, 512),
        (NBD_CMD_WRITE_ZEROES, 512),
    ] {
        let bytes = raw_request(0, command, 2, 0, length);
        let error = expect_refusal(&mut h, &bytes, 2, Errno::Inval);
        assert_eq!(error, RequestError::NotAdvertised { cookie: 2, command });
    }
    still_in_sync(&mut h);
}

#[test]
fn writes_to_a_read_only_export_get_eperm() {
    let mut export = volume(MIB);
    export.read_only = true;
    let mut h = transmitting(export);
    assert_ne!(
        h.conn.export().unwrap().transmission_flags() & NBD_FLAG_READ_ONLY,
        0
    );
    let mut write = raw_request(0, NBD_CMD_WRITE, 1, 0, 512);
    write.extend_from_slice(&[7; 512]);
    let error = expect_refusal(&mut h, &write, 1, Errno::Perm);
    assert_eq!(
        error,
        RequestError::ReadOnly {
            cookie: 1,
            command: NBD_CMD_WRITE
        }
    );
    expect_refusal(
        &mut h,
        &raw_request(0, NBD_CMD_TRIM, 2, 0, 512),
        2,
        Errno::Perm,
    );
    expect_refusal(
        &mut h,
        &raw_request(0, NBD_CMD_WRITE_ZEROES, 3, 0, 512),
        3,
        Errno::Perm,
    );
    still_in_sync(&mut h);
}

#[test]
fn flush_with_a_range_gets_einval() {
    let mut h = transmitting(volume(MIB));
    let error = expect_refusal(
        &mut h,
        &raw_request(0, NBD_CMD_FLUSH, 1, 512, 0),
        1,
        Errno::Inval,
    );
    assert_eq!(
        error,
        RequestError::FlushRangeNotZero {
            cookie: 1,
            offset: 512,
            length: 0
        }
    );
    expect_refusal(
        &mut h,
        &raw_request(0, NBD_CMD_FLUSH, 2, 0, 1),
        2,
        Errno::Inval,
    );
}

#[test]
fn zero_length_requests_get_einval() {
    let mut h = transmitting(volume(MIB));
    for command in [
        NBD_CMD_READ,
        NBD_CMD_WRITE,
        NBD_CMD_TRIM,
        NBD_CMD_WRITE_ZEROES,
    ] {
        let error = expect_refusal(&mut h, &raw_request(0, command, 1, 0, 0), 1, Errno::Inval);
        assert_eq!(error, RequestError::ZeroLength { cookie: 1, command });
    }
    still_in_sync(&mut h);
}

#[test]
fn read_above_the_maximum_payload_gets_einval() {
    let mut h = transmitting(volume(64 * MIB));
    let length = (32 << 20) + 1;
    let error = expect_refusal(
        &mut h,
        &raw_request(0, NBD_CMD_READ, 1, 0, length),
        1,
        Errno::Inval,
    );
    let limit = 32 << 20;
    assert_eq!(
        error,
        RequestError::PayloadTooLong {
            cookie: 1,
            command: NBD_CMD_READ,
            length,
            limit
        }
    );
}

#[test]
fn trim_and_write_zeroes_may_exceed_the_maximum_payload() {
    let mut h = transmitting(volume(64 * MIB));
    let length = 48 << 20;
    h.send(&raw_request(0, NBD_CMD_TRIM, 1, 0, length));
    let trim = Request::Trim {
        cookie: 1,
        offset: 0,
        length,
        fua: false,
    };
    assert_eq!(h.conn.next_request(), Some(trim));
}

fn small_payload_export() -> Export {
    let mut export = volume(4 * MIB);
    export.block_sizes = BlockSizes {
        minimum: 512,
        preferred: 4096,
        maximum: 64 * 1024,
    };
    export
}

#[test]
fn write_above_the_advertised_maximum_is_consumed_and_refused() {
    let mut h = transmitting(small_payload_export());
    let length = 128 * 1024;
    let mut bytes = raw_request(0, NBD_CMD_WRITE, 5, 0, length);
    bytes.extend(vec![0x25u8; length as usize]);
    // Split so the payload straddles receives.
    let (a, b) = bytes.split_at(1000);
    h.send(a);
    assert!(
        h.conn.take_output().is_empty(),
        "reply only after the payload is consumed"
    );
    let error = expect_refusal(&mut h, b, 5, Errno::Inval);
    assert!(matches!(
        error,
        RequestError::PayloadTooLong {
            length: 131072,
            limit: 65536,
            ..
        }
    ));
    assert!(h.conn.buffered_bytes() <= h.conn.input_capacity());
    still_in_sync(&mut h);
}

#[test]
fn write_above_the_denial_of_service_threshold_closes() {
    let mut h = transmitting(small_payload_export());
    let length = (32 << 20) + 512;
    h.send(&raw_request(0, NBD_CMD_WRITE, 6, 0, length));
    let error = closed_with(&h.conn);
    let limit = 32 << 20;
    assert!(
        matches!(error, ProtocolError::WritePayloadTooLong { cookie: 6, length: l, limit: m, .. } if l == length && m == limit)
    );
    assert!(error.to_string().contains("exceeds 33554432"), "{error}");
    assert!(h.conn.is_finished());
}

#[test]
fn unaligned_requests_get_einval() {
    let mut h = transmitting(small_payload_export());
    for (command, offset, length) in [
        (NBD_CMD_READ, 100, 512),
        (NBD_CMD_READ, 0, 100),
        (NBD_CMD_TRIM, 512, 513),
        (NBD_CMD_WRITE_ZEROES, 1, 512),
    ] {
        let bytes = raw_request(0, command, 8, offset, length);
        let error = expect_refusal(&mut h, &bytes, 8, Errno::Inval);
        let expected = RequestError::Unaligned {
            cookie: 8,
            command,
            offset,
            length,
            block: 512,
        };
        assert_eq!(error, expected);
    }
    let mut write = raw_request(0, NBD_CMD_WRITE, 9, 0, 100);
    write.extend_from_slice(&[1; 100]);
    expect_refusal(&mut h, &write, 9, Errno::Inval);
    still_in_sync(&mut h);
}

#[test]
fn out_of_range_reads_and_trims_get_einval_writes_get_enospc() {
    let mut h = transmitting(volume(MIB));
    let size = MIB;
    let cases = [
        (NBD_CMD_READ, size - 511, 512, Errno::Inval),
        (NBD_CMD_TRIM, size, 1, Errno::Inval),
        (NBD_CMD_WRITE_ZEROES, size - 1, 2, Errno::NoSpc),
        (NBD_CMD_READ, u64::MAX, 1, Errno::Inval),
        (NBD_CMD_WRITE_ZEROES, u64::MAX - 1, 16, Errno::NoSpc),
    ];
    for (command, offset, length, errno) in cases {
        let error = expect_refusal(
            &mut h,
            &raw_request(0, command, 1, offset, length),
            1,
            errno,
        );
        assert_eq!(
            error,
            RequestError::OutOfRange {
                cookie: 1,
                command,
                offset,
                length,
                size
            }
        );
    }
    let mut write = raw_request(0, NBD_CMD_WRITE, 2, size - 4, 8);
    write.extend_from_slice(&[9; 8]);
    expect_refusal(&mut h, &write, 2, Errno::NoSpc);
    // The last byte is fine.
    h.send(&raw_request(0, NBD_CMD_READ, 3, size - 1, 1));
    assert_eq!(
        h.conn.next_request(),
        Some(Request::Read {
            cookie: 3,
            offset: size - 1,
            length: 1
        })
    );
}

#[test]
fn bad_request_magic_closes() {
    let mut h = transmitting(volume(MIB));
    h.send(&encode_request(&Request::Flush { cookie: 1 }));
    let mut bytes = raw_request(0, NBD_CMD_READ, 2, 0, 512);
    bytes[..4].copy_from_slice(&0x1256_0953u32.to_be_bytes());
    h.send(&bytes);
    let error = closed_with(&h.conn);
    assert_eq!(
        error,
        ProtocolError::BadRequestMagic {
            at: 57,
            found: 0x1256_0953
        }
    );
    assert_eq!(
        error.to_string(),
        "request header at byte 57: magic 0x12560953 is not NBD_REQUEST_MAGIC (0x25609513)"
    );
    assert!(h.conn.is_finished());
    assert_eq!(
        h.conn.next_request(),
        None,
        "queued requests are dropped on a hard close"
    );
    assert_eq!(h.conn.reply(1, Ok(&[])), Ok(()));
    h.pull();
    assert_eq!(
        h.server.remaining(),
        0,
        "nothing is sent after a hard close"
    );
}

#[test]
fn rejection_messages_name_what_and_where() {
    let error = RequestError::OutOfRange {
        cookie: 0x10,
        command: NBD_CMD_WRITE,
        offset: 1000,
        length: 48,
        size: 1024,
    };
    assert_eq!(
        error.to_string(),
        "request 0x10 (NBD_CMD_WRITE): offset 1000 + length 48 runs past the export size 1024"
    );
}

// ---- Reply errors and bounds ---------------------------------------------------------------

#[test]
fn wrong_replies_are_refused_without_output() {
    let mut h = transmitting(volume(MIB));
    h.send(&encode_request(&Request::Read {
        cookie: 1,
        offset: 0,
        length: 4,
    }));
    h.send(&encode_request(&Request::Flush { cookie: 2 }));
    while h.conn.next_request().is_some() {}
    assert_eq!(
        h.conn.reply(99, Ok(&[])),
        Err(ReplyError::UnknownCookie { cookie: 99 })
    );
    let short = h.conn.reply(1, Ok(b"abc"));
    assert_eq!(
        short,
        Err(ReplyError::ReadLengthMismatch {
            cookie: 1,
            expected: 4,
            actual: 3
        })
    );
    let data = h.conn.reply(2, Ok(b"x"));
    let expected = ReplyError::UnexpectedData {
        cookie: 2,
        command: NBD_CMD_FLUSH,
        actual: 1,
    };
    assert_eq!(data, Err(expected));
    assert!(!h.conn.has_output());
    assert_eq!(h.conn.pending_requests(), 2);
    h.conn.reply(1, Ok(b"abcd")).unwrap();
    h.conn.reply(2, Ok(&[])).unwrap();
    assert_eq!(h.conn.pending_requests(), 0);
}

#[test]
fn pending_request_limit_applies_backpressure() {
    let mut h = transmitting(volume(MIB));
    let one = |cookie| {
        encode_request(&Request::Read {
            cookie,
            offset: 0,
            length: 1,
        })
    };
    let stream: Vec<u8> = (0..MAX_PENDING_REQUESTS as u64 + 10)
        .flat_map(one)
        .collect();
    assert_eq!(h.conn.receive(&stream), stream.len(), "fits in the buffer");
    let mut taken = 0;
    while h.conn.next_request().is_some() {
        taken += 1;
    }
    assert_eq!(taken, MAX_PENDING_REQUESTS);
    assert_eq!(h.conn.buffered_bytes(), 10 * REQUEST_HEADER_LEN);
    h.conn.reply(0, Ok(b"z")).unwrap();
    assert_eq!(
        h.conn.next_request(),
        Some(Request::Read {
            cookie: 256,
            offset: 0,
            length: 1
        })
    );
    assert_eq!(h.conn.next_request(), None);
}

#[test]
fn input_stays_within_one_maximum_request() {
    let mut h = transmitting(small_payload_export());
    let write = |cookie| {
        let data = vec![cookie as u8; 64 * 1024];
        encode_request(&Request::Write {
            cookie,
            offset: 0,
            data,
            fua: false,
        })
    };
    let stream: Vec<u8> = (0..4u64).flat_map(write).collect();
    let capacity = h.conn.input_capacity();
    assert_eq!(capacity, REQUEST_HEADER_LEN + 64 * 1024);
    let mut offset = 0;
    let mut seen = Vec::new();
    while offset < stream.len() {
        let accepted = h.conn.receive(&stream[offset..]);
        offset += accepted;
        assert!(h.conn.buffered_bytes() <= capacity);
        match h.conn.next_request() {
            Some(request) => seen.push(request.cookie().unwrap()),
            None => assert!(accepted > 0, "stuck with nothing to take"),
        }
    }
    while let Some(request) = h.conn.next_request() {
        seen.push(request.cookie().unwrap());
    }
    assert_eq!(seen, [0, 1, 2, 3]);
}

#[test]
fn output_high_water_pauses_parsing() {
    let mut h = transmitting(small_payload_export());
    let bad = raw_request(0, 99, 1, 0, 0);
    let count = OUTPUT_HIGH_WATER / SIMPLE_REPLY_HEADER_LEN + 5000;
    let stream = bad.repeat(count);
    let accepted = h.conn.receive(&stream);
    assert!(accepted < stream.len(), "parsing paused, input capped");
    assert!(h.conn.buffered_bytes() <= h.conn.input_capacity());
    let out = h.conn.take_output();
    assert_eq!(
        out.len(),
        OUTPUT_HIGH_WATER.div_ceil(SIMPLE_REPLY_HEADER_LEN) * 16
    );
    let rest = h.conn.receive(&stream[accepted..]);
    assert_eq!(accepted + rest, stream.len());
    let (kept, dropped) = h.conn.take_rejections();
    assert_eq!(kept.len(), MAX_REJECTIONS_KEPT);
    assert_eq!(dropped as usize + kept.len(), count);
}

// ---- Catalogue -----------------------------------------------------------------------------

#[test]
fn catalogue_refuses_bad_exports() {
    let sizes = |minimum, preferred, maximum| BlockSizes {
        minimum,
        preferred,
        maximum,
    };
    let with = |f: &dyn Fn(&mut Export)| {
        let mut export = volume(MIB);
        f(&mut export);
        Catalogue::new(vec![export])
    };
    assert!(matches!(
        with(&|e| e.name = "a\0b".into()),
        Err(CatalogueError::BadName { .. })
    ));
    assert!(matches!(
        with(&|e| e.name = "x".repeat(4097)),
        Err(CatalogueError::BadName { .. })
    ));
    let bad_sizes = [
        sizes(3, 4096, 1 << 20),
        sizes(1 << 17, 1 << 17, 1 << 20),
        sizes(512, 256, 1 << 20),
        sizes(4096, 2048, 1 << 20),
        sizes(512, 4096, 1024),
        sizes(512, 4096, (1 << 25) + 1),
    ];
    for bad in bad_sizes {
        let result = with(&|e| e.block_sizes = bad);
        assert!(
            matches!(result, Err(CatalogueError::BadBlockSizes { .. })),
            "{bad}"
        );
    }
    let unaligned = with(&|e| {
        e.size = MIB + 1;
        e.block_sizes = sizes(512, 4096, 1 << 20);
    });
    let error = unaligned.unwrap_err();
    assert!(error.to_string().contains("multiple of minimum"), "{error}");
    let fast = with(&|e| (e.can_write_zeroes, e.can_fast_zero) = (false, true));
    assert!(matches!(
        fast,
        Err(CatalogueError::FastZeroWithoutWriteZeroes { .. })
    ));
    let twice = Catalogue::new(vec![volume(MIB), volume(2 * MIB)]);
    assert_eq!(
        twice,
        Err(CatalogueError::DuplicateName { name: "vol".into() })
    );
    let default = catalogue().with_default("missing");
    assert_eq!(
        default,
        Err(CatalogueError::NoSuchDefault {
            name: "missing".into()
        })
    );
}

#[test]
fn transmission_flags_follow_capabilities() {
    let mut export = Export::new("x", 0);
    (
        export.read_only,
        export.can_multi_conn,
        export.can_fast_zero,
    ) = (true, true, true);
    let flags = export.transmission_flags();
    for bit in [
        NBD_FLAG_READ_ONLY,
        NBD_FLAG_CAN_MULTI_CONN,
        NBD_FLAG_SEND_FAST_ZERO,
    ] {
        assert_ne!(flags & bit, 0);
    }
    assert_eq!(
        flags & (NBD_FLAG_SEND_DF | NBD_FLAG_ROTATIONAL | NBD_FLAG_SEND_CACHE),
        0
    );
}

#[test]
fn errno_codes_round_trip() {
    for errno in [
        Errno::Perm,
        Errno::Io,
        Errno::NoMem,
        Errno::Inval,
        Errno::NoSpc,
        Errno::Overflow,
        Errno::NotSup,
        Errno::Shutdown,
    ] {
        assert_eq!(Errno::from_code(errno.code()), Some(errno));
    }
    assert_eq!(Errno::from_code(0), None);
}

// ---- Properties ----------------------------------------------------------------------------

const PROP_SIZE: u64 = 1 << 20;

fn prop_export() -> Export {
    let mut export = volume(PROP_SIZE);
    export.can_fast_zero = true;
    export
}

/// A request valid on [`prop_export`].
fn valid_request() -> impl Strategy<Value = Request> {
    let range = (0..PROP_SIZE - 1)
        .prop_flat_map(|offset| (Just(offset), 1..=(PROP_SIZE - offset).min(1 << 16) as u32));
    let data = proptest::collection::vec(any::<u8>(), 1..300);
    prop_oneof![
        (any::<u64>(), range.clone()).prop_map(|(cookie, (offset, length))| Request::Read {
            cookie,
            offset,
            length
        }),
        (any::<u64>(), data, 0..PROP_SIZE - 300, any::<bool>()).prop_map(
            |(cookie, data, offset, fua)| Request::Write {
                cookie,
                offset,
                data,
                fua
            }
        ),
        any::<u64>().prop_map(|cookie| Request::Flush { cookie }),
        (any::<u64>(), range.clone(), any::<bool>()).prop_map(|(cookie, (offset, length), fua)| {
            Request::Trim {
                cookie,
                offset,
                length,
                fua,
            }
        }),
        (any::<u64>(), range, any::<[bool; 3]>()).prop_map(
            |(cookie, (offset, length), [fua, no_hole, fast])| Request::WriteZeroes {
                cookie,
                offset,
                length,
                fua,
                no_hole,
                fast,
            }
        ),
    ]
}

/// The handshake bytes that take a client to transmission on "vol".
fn handshake_script() -> Vec<u8> {
    [
        fixed_no_zeroes(),
        option(NBD_OPT_GO, &info_data("vol", &[])),
    ]
    .concat()
}

/// Feeds `stream` in the given chunks, taking and answering requests as they come (so the
/// pending limit never stalls it); returns the requests seen.
fn feed(conn: &mut NbdConnection, stream: &[u8], cuts: &[usize]) -> Vec<Request> {
    let mut seen = Vec::new();
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    points.push(stream.len());
    points.sort_unstable();
    let mut start = 0;
    for end in points {
        while start < end {
            let accepted = conn.receive(&stream[start..end]);
            start += accepted;
            assert!(conn.buffered_bytes() <= conn.input_capacity());
            let before = seen.len();
            drain_and_answer(conn, &mut seen);
            conn.take_output();
            if accepted == 0 && seen.len() == before {
                break;
            }
        }
    }
    drain_and_answer(conn, &mut seen);
    seen
}

fn drain_and_answer(conn: &mut NbdConnection, seen: &mut Vec<Request>) {
    while let Some(request) = conn.next_request() {
        if let Some(cookie) = request.cookie() {
            let answered = match &request {
                Request::Read { length, .. } => conn.reply(cookie, Ok(&vec![0; *length as usize])),
                _ => conn.reply(cookie, Err(Errno::Io)),
            };
            assert_eq!(answered, Ok(()));
        }
        seen.push(request);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// (a) Arbitrary bytes at arbitrary split points, from the first byte or after a valid
    /// handshake, never panic and never grow the input past its capacity.
    #[test]
    fn arbitrary_input_never_panics_and_stays_bounded(
        garbage in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
        after_handshake in any::<bool>(),
        prefix_magic in any::<bool>(),
    ) {
        let mut conn = NbdConnection::new(Catalogue::new(vec![prop_export()]).unwrap());
        let mut stream = if after_handshake { handshake_script() } else { Vec::new() };
        if prefix_magic {
            // Make deeper parsing likely: a plausible header start before the noise.
            let magic = if after_handshake { NBD_REQUEST_MAGIC.to_be_bytes().to_vec() } else {
                [fixed_no_zeroes(), IHAVEOPT.to_be_bytes().to_vec()].concat()
            };
            stream.extend(magic);
        }
        stream.extend(&garbage);
        feed(&mut conn, &stream, &cuts);
        prop_assert!(conn.buffered_bytes() <= conn.input_capacity());
        prop_assert!(conn.pending_requests() <= MAX_PENDING_REQUESTS);
        let _ = conn.state();
        let _ = conn.take_output();
    }

    /// (a') The same for a valid session with a few bytes corrupted, which reaches deeper
    /// into option and request validation than pure noise.
    #[test]
    fn corrupted_session_never_panics_and_stays_bounded(
        requests in proptest::collection::vec(valid_request(), 1..20),
        corruptions in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..6),
        cuts in proptest::collection::vec(any::<usize>(), 0..16),
    ) {
        let mut stream: Vec<u8> = [handshake_script()]
            .into_iter()
            .chain(requests.iter().map(encode_request))
            .flatten()
            .collect();
        for (at, byte) in corruptions {
            let len = stream.len();
            stream[at % len] = byte;
        }
        let mut conn = NbdConnection::new(Catalogue::new(vec![prop_export()]).unwrap());
        feed(&mut conn, &stream, &cuts);
        prop_assert!(conn.buffered_bytes() <= conn.input_capacity());
        prop_assert!(conn.pending_requests() <= MAX_PENDING_REQUESTS);
    }

    /// (b) A valid request stream split at random points decodes to the same requests as
    /// when fed whole.
    #[test]
    fn split_stream_decodes_like_whole(
        requests in proptest::collection::vec(valid_request(), 1..40),
        cuts in proptest::collection::vec(any::<usize>(), 0..40),
    ) {
        let stream: Vec<u8> = [handshake_script()]
            .into_iter()
            .chain(requests.iter().map(encode_request))
            .chain([encode_request(&Request::Disconnect)])
            .flatten()
            .collect();
        let mut whole = NbdConnection::new(Catalogue::new(vec![prop_export()]).unwrap());
        let from_whole = feed(&mut whole, &stream, &[]);
        let mut split = NbdConnection::new(Catalogue::new(vec![prop_export()]).unwrap());
        let from_split = feed(&mut split, &stream, &cuts);
        let mut expected = requests.clone();
        expected.push(Request::Disconnect);
        prop_assert_eq!(&from_whole, &expected);
        prop_assert_eq!(&from_split, &expected);
        prop_assert!(whole.is_finished() && split.is_finished());
    }

    /// (c) Request encode/decode round trip, one at a time, with the reply decoded by the
    /// test client.
    #[test]
    fn request_round_trip(request in valid_request(), errno in any::<bool>()) {
        let mut h = Harness::go(Catalogue::new(vec![prop_export()]).unwrap(), "vol");
        h.send(&encode_request(&request));
        prop_assert_eq!(h.conn.next_request(), Some(request.clone()));
        let cookie = request.cookie().unwrap_or(0);
        let length = match request { Request::Read { length, .. } => length as usize, _ => 0 };
        let data: Vec<u8> = (0..length).map(|i| i as u8).collect();
        let result = if errno { Err(Errno::Io) } else { Ok(&data[..]) };
        prop_assert_eq!(h.conn.reply(cookie, result), Ok(()));
        h.pull();
        let reply = h.server.simple_reply(length);
        let expected_error = if errno { NBD_EIO } else { 0 };
        prop_assert_eq!((reply.error, reply.cookie), (expected_error, cookie));
        prop_assert_eq!(reply.data, if errno { Vec::new() } else { data });
        prop_assert_eq!(h.server.remaining(), 0);
    }
}
