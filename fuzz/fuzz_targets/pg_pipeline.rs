//! The PostgreSQL pipeline on arbitrary backend bytes: a few requests are
//! queued (some abandoned), then whatever the fuzzer gives is fed in pieces.
//! It never panics, keeps no more than its limits, and never completes a
//! request that was not asked for, or one twice, or out of order.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ringside_wire::pg::pipeline::{Event, Limits, Param, Pipeline, RequestId};
use ringside_wire::pg::TxStatus;

fuzz_target!(|data: &[u8]| {
    let Some((&plan, rest)) = data.split_first() else {
        return;
    };
    let limits = Limits {
        max_message_bytes: 4096,
        max_result_bytes: 8192,
    };
    let mut p = Pipeline::new(limits, TxStatus::Idle);
    let mut out = BytesMut::new();
    let mut asked = Vec::new();
    // Plans with bit 3 set batch the queries (one Sync for a run of them).
    let batch = plan & 0x08 != 0;
    for i in 0..(plan % 6) {
        let id = if i % 2 == 0 && batch {
            p.query_in_batch("SELECT $1::int8", &[20], &[Param::I64(i64::from(i))], &mut out)
        } else if i % 2 == 0 {
            p.query("SELECT $1::int8", &[20], &[Param::I64(i64::from(i))], "", 0, &mut out)
        } else {
            p.simple("SELECT 1", &mut out)
        }
        .expect("encoding never fails here");
        asked.push(id);
    }
    p.close_batch(&mut out);
    let abandoned: Vec<RequestId> = asked
        .iter()
        .enumerate()
        .filter(|(i, _)| plan & (0x40 >> (i % 2)) != 0 && i % 3 == 0)
        .map(|(_, id)| *id)
        .collect();
    for id in &abandoned {
        p.abandon(*id);
    }
    let mut input = BytesMut::new();
    let mut done: Vec<RequestId> = Vec::new();
    let step = usize::from(plan >> 4).max(1);
    for piece in rest.chunks(step) {
        input.extend_from_slice(piece);
        let broken = p.receive(&mut input).is_err();
        assert!(input.len() <= 4096 + 5 + step, "input kept past one message");
        while let Some(event) = p.next_event() {
            let id = match event {
                Event::CopyReady(id) => id,
                Event::Done(id, result) => {
                    if let Ok(rows) = &result {
                        assert!(rows.len() <= 8192);
                    }
                    assert!(!done.contains(&id), "completed twice");
                    assert!(done.last().is_none_or(|last| *last < id), "out of order");
                    done.push(id);
                    id
                }
            };
            assert!(asked.contains(&id), "a completion for a request never made");
            assert!(!abandoned.contains(&id), "an abandoned request completed");
        }
        assert!(p.in_flight() <= asked.len());
        if broken {
            let rest = p.take_unanswered("fuzz");
            assert!(rest.iter().all(|id| !done.contains(id)));
            break;
        }
    }
});
