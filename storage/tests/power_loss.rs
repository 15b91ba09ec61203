//! Power cuts under the whole storage engine: the metadata store (redb,
//! through its backend trait), the key registry in it and the partition
//! logs all live on a simulated file system (`PowerLossIo`) that keeps only
//! what POSIX says is durable: file data after `fdatasync`/`fsync`, a name
//! after an `fsync` of its directory. A SIGKILL test cannot find a missing
//! directory `fsync` (the page cache outlives the process); this can.
//!
//! Each case runs a few epochs of random steps the way the broker takes
//! them: topic creation (metadata commit, then partition directories),
//! appends waited on until durable, rolls, retention, KEK rotation,
//! rewrap and destruction of unused versions, topic deletion (shredding),
//! offset commits, producer ids and moves past lost offsets (gap markers).
//! In each epoch the power goes off at a random operation of a random step,
//! or a random number of operations into the restart that begins the epoch
//! (inside recovery, or just after it: a second cut before the first one's
//! aftermath is tidied up). The system restarts on what the disk kept:
//! only what was durable, or also a random prefix of what was not, or
//! directory changes that were not synced reaching the disk out of order
//! (POSIX orders none of them). The test checks the disk the cut left, as
//! a copy taken then would hold it: no key envelope whose shredding had
//! begun is there again, no new segment sits on the name of one whose
//! deletion a cut undid, nothing of a topic whose deletion was
//! acknowledged is back. After the restart it checks that every acknowledged
//! record is present and intact, no offset holds another record than
//! before, no record below a log start that retention acknowledged is
//! back, the key registry and the logs name the same segments, deleted
//! topics stay deleted with their files and registry entries gone,
//! committed offsets and producer ids are not lost, and nothing panics.
//!
//! A fixed scenario is also cut at *every* operation, one run per cut
//! point, and with torn writes at every fourth one; and a scenario of
//! removals (retention, a truncation, a move past lost offsets, a topic
//! deletion) at every operation of each removal, its directories found out
//! of order, with a second cut at every operation of the restart (and of an
//! append after it) that a truncation and a move leave the most to finish,
//! and that every cut of a move from an earlier move's empty file leaves.
//!
//! `STRONGBOX_POWER_LOSS_CASES` sets the number of random cases (default
//! 256).

mod power_loss_support;

use proptest::prelude::*;
use strongbox_storage::io::PowerLossIo;

use power_loss_support::{
    Model, Op, World, check_after_restart, check_disk_after_cut, describe, note_durable, step,
};

/// How the disk is found after a cut.
#[derive(Debug, Clone, Copy)]
enum Found {
    /// With what was durable only.
    Durable,
    /// Also with a prefix of what was not, drawn from this seed.
    Torn(u64),
    /// Also with part of what was not, directory changes out of order.
    Reordered(u64),
    /// Also with the newest unsynced entry change of each directory.
    NewestChange,
    /// Also with the oldest unsynced entry change of each directory.
    OldestChange,
}

impl Found {
    fn restart(self, io: &PowerLossIo) -> PowerLossIo {
        match self {
            Self::Durable => io.restart(None),
            Self::Torn(seed) => io.restart(Some(seed)),
            Self::Reordered(seed) => io.restart_reordered(seed),
            Self::NewestChange => io.restart_newest_change_only(),
            Self::OldestChange => io.restart_oldest_change_only(),
        }
    }
}

/// One epoch: steps, where the power goes off, and how the disk is found.
#[derive(Debug, Clone)]
struct Epoch {
    ops: Vec<Op>,
    /// The step during which the power goes off (none: after the last).
    cut_step: usize,
    /// Operations of that step that still reach the disk.
    cut_ops: u16,
    /// Instead, the power goes off this many operations after the start of
    /// the epoch: inside the restart (recovery, finishing deletions) or
    /// just after it, before what the last cut left is tidied up for good.
    boot_cut: Option<u16>,
    /// How the disk is found afterwards.
    torn: Found,
}

fn found() -> impl Strategy<Value = Found> {
    prop_oneof![
        6 => Just(Found::Durable),
        4 => any::<u64>().prop_map(Found::Torn),
        1 => any::<u64>().prop_map(Found::Reordered),
        1 => Just(Found::NewestChange),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (1u32..=2, any::<bool>(), prop::bool::weighted(0.3)).prop_map(
            |(partitions, fsync, dedicated)| Op::CreateTopic { partitions, fsync, dedicated }
        ),
        10 => (0usize..8, 0u32..2, 1u8..=3, 1u16..300).prop_map(
            |(topic, partition, records, size)| Op::Append { topic, partition, records, size }
        ),
        2 => (0usize..8, 0u32..2).prop_map(|(topic, partition)| Op::Roll { topic, partition }),
        2 => (0usize..8, 0u32..2, 100u16..800).prop_map(|(topic, partition, keep)| {
            Op::Retention { topic, partition, keep }
        }),
        1 => (0usize..8).prop_map(|topic| Op::Rotate { topic }),
        1 => (0usize..8).prop_map(|topic| Op::Rewrap { topic }),
        1 => (0usize..8).prop_map(|topic| Op::Destroy { topic }),
        1 => (0usize..8).prop_map(|topic| Op::Delete { topic }),
        2 => (0usize..8, 0u32..2).prop_map(|(topic, partition)| Op::Commit { topic, partition }),
        1 => Just(Op::ProducerId),
        1 => (0usize..8, 0u32..2, any::<u8>()).prop_map(|(topic, partition, by)| {
            Op::Skip { topic, partition, by }
        }),
    ]
}

fn epoch() -> impl Strategy<Value = Epoch> {
    (
        prop::collection::vec(op(), 1..24),
        any::<prop::sample::Index>(),
        0u16..40,
        prop::option::weighted(0.25, 0u16..80),
        found(),
    )
        .prop_map(|(ops, at, cut_ops, boot_cut, torn)| Epoch {
            cut_step: at.index(ops.len() + 1),
            ops,
            cut_ops,
            boot_cut,
            torn,
        })
}

/// Runs `epochs` and a last restart; returns how many operations each
/// epoch after the first that came up (its restart, the check after it and
/// its steps) and the last restart took.
fn run(epochs: &[Epoch]) -> Result<Vec<u64>, TestCaseError> {
    let keys_dir = tempfile::tempdir().expect("key dir");
    let mut io = PowerLossIo::new();
    let mut model = Model::default();
    let mut restarts = Vec::new();
    let mut first = true;
    for (n, e) in epochs.iter().enumerate() {
        let report = |model: &Model, io: &PowerLossIo, what: String| {
            TestCaseError::fail(format!(
                "epoch {n}: {what}\nsteps:\n  {}\ndisk (live):\n{}",
                model.trace.join("\n  "),
                describe(io)
            ))
        };
        if let Err(what) = check_disk_after_cut(&io, &model) {
            return Err(report(&model, &io, what));
        }
        if let Some(k) = e.boot_cut {
            model
                .trace
                .push(format!("-- power cut {k} operations into the restart"));
            io.cut_after(u64::from(k));
        } else if e.cut_step == 0 {
            io.cut_after(u64::from(e.cut_ops));
        }
        let mut world = match World::boot(io.clone(), keys_dir.path()) {
            Ok(w) => w,
            // The power went off while it started: it never came up.
            Err(what) if !io.is_powered() => {
                model.trace.push(format!("-- boot cut short: {what}"));
                io = e.torn.restart(&io);
                continue;
            }
            Err(what) => return Err(report(&model, &io, what)),
        };
        if !first
            && world.io.is_powered()
            && let Err(what) = check_after_restart(&mut world, &mut model)
        {
            return Err(report(&model, &io, what));
        }
        let counted = !first;
        first = false;
        model
            .trace
            .push(format!("-- epoch {n} running, torn: {:?}", e.torn));
        for (i, op) in e.ops.iter().enumerate() {
            if e.boot_cut.is_none() && i + 1 == e.cut_step {
                world.io.cut_after(u64::from(e.cut_ops));
            }
            if !world.io.is_powered() {
                break;
            }
            if let Err(what) = step(&mut world, &mut model, op) {
                return Err(report(&model, &world.io, what));
            }
            note_durable(&world, &mut model);
        }
        if counted {
            restarts.push(world.io.ops());
        }
        model
            .trace
            .push(format!("-- power cut after {} operations", world.io.ops()));
        let old = world.crash();
        io = e.torn.restart(&old);
    }
    // A last restart checks the last epoch.
    check_disk_after_cut(&io, &model).map_err(|what| {
        TestCaseError::fail(format!(
            "final cut: {what}\nsteps:\n  {}\ndisk:\n{}",
            model.trace.join("\n  "),
            describe(&io)
        ))
    })?;
    let mut world = World::boot(io.clone(), keys_dir.path()).map_err(|what| {
        TestCaseError::fail(format!(
            "final boot: {what}\nsteps:\n  {}",
            model.trace.join("\n  ")
        ))
    })?;
    check_after_restart(&mut world, &mut model).map_err(|what| {
        TestCaseError::fail(format!(
            "final check: {what}\nsteps:\n  {}\ndisk:\n{}",
            model.trace.join("\n  "),
            describe(&io)
        ))
    })?;
    restarts.push(io.ops());
    Ok(restarts)
}

fn cases() -> u32 {
    std::env::var("STRONGBOX_POWER_LOSS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(),
        max_shrink_iters: 200,
        // A failure prints its minimal case; the fixed sweep below keeps
        // the regressions found so far.
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn acknowledged_state_survives_power_cuts(epochs in prop::collection::vec(epoch(), 1..4)) {
        run(&epochs)?;
    }
}

/// One scenario that touches every kind of step, cut at each of its
/// operations in turn (data directory and metadata store creation
/// included), then restarted with only what was durable, and at every
/// fourth cut point once more keeping a torn prefix of what was not.
#[test]
fn a_power_cut_at_every_operation_of_a_fixed_scenario() {
    let ops = vec![
        Op::CreateTopic {
            partitions: 1,
            fsync: true,
            dedicated: false,
        },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 3,
            size: 200,
        },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 2,
            size: 150,
        },
        Op::Commit {
            topic: 0,
            partition: 0,
        },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 3,
            size: 250,
        },
        Op::Roll {
            topic: 0,
            partition: 0,
        },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 1,
            size: 20,
        },
        Op::Retention {
            topic: 0,
            partition: 0,
            keep: 200,
        },
        Op::ProducerId,
        Op::Rotate { topic: 0 },
        Op::Rewrap { topic: 0 },
        Op::Destroy { topic: 0 },
        Op::CreateTopic {
            partitions: 2,
            fsync: false,
            dedicated: true,
        },
        Op::Append {
            topic: 1,
            partition: 1,
            records: 2,
            size: 300,
        },
        Op::Roll {
            topic: 1,
            partition: 1,
        },
        Op::Skip {
            topic: 0,
            partition: 0,
            by: 9,
        },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 1,
            size: 10,
        },
        Op::Delete { topic: 1 },
        Op::Append {
            topic: 0,
            partition: 0,
            records: 1,
            size: 10,
        },
    ];
    // How many operations the whole scenario takes without a cut.
    let total = {
        let keys_dir = tempfile::tempdir().expect("key dir");
        let io = PowerLossIo::new();
        let mut world = World::boot(io.clone(), keys_dir.path()).expect("boot");
        let mut model = Model::default();
        for op in &ops {
            step(&mut world, &mut model, op).expect("uncut run");
        }
        io.ops()
    };
    assert!(
        total > 100,
        "the scenario does real work: {total} operations"
    );
    for cut in 0..=total {
        // Torn writes at every fourth cut point keep the run within a
        // minute on a busy machine; the random cases tear at any point.
        let tears = (cut % 4 == 0).then_some(Found::Torn(cut));
        for torn in std::iter::once(Found::Durable).chain(tears) {
            let epoch = Epoch {
                ops: ops.clone(),
                cut_step: 0,
                cut_ops: u16::try_from(cut).expect("small"),
                boot_cut: None,
                torn,
            };
            if let Err(e) = run(&[epoch]) {
                panic!("power cut after {cut} of {total} operations ({torn:?}): {e}");
            }
        }
    }
}

/// Every way the log removes something: retention (several segments at
/// once), a truncation that deletes the newest segment (whose base the next
/// append takes again), a move past lost offsets and a second one that
/// removes the empty segment file the first made, emptying a segment
/// without frames, and the deletion of a topic with two partitions.
fn deletion_scenario() -> Vec<Op> {
    let append = |topic, partition, records, size| Op::Append {
        topic,
        partition,
        records,
        size,
    };
    vec![
        Op::CreateTopic {
            partitions: 1,
            fsync: true,
            dedicated: false,
        },
        append(0, 0, 3, 250),
        Op::Roll {
            topic: 0,
            partition: 0,
        },
        append(0, 0, 2, 200),
        Op::Roll {
            topic: 0,
            partition: 0,
        },
        append(0, 0, 1, 100),
        Op::Retention {
            topic: 0,
            partition: 0,
            keep: 60,
        },
        Op::Roll {
            topic: 0,
            partition: 0,
        },
        append(0, 0, 1, 40),
        Op::Truncate {
            topic: 0,
            partition: 0,
        },
        append(0, 0, 1, 30),
        Op::Skip {
            topic: 0,
            partition: 0,
            by: 4,
        },
        Op::Skip {
            topic: 0,
            partition: 0,
            by: 3,
        },
        Op::CreateTopic {
            partitions: 2,
            fsync: true,
            dedicated: false,
        },
        append(1, 0, 2, 300),
        Op::Roll {
            topic: 1,
            partition: 0,
        },
        append(1, 1, 1, 50),
        Op::Delete { topic: 1 },
        append(0, 0, 1, 10),
    ]
}

/// What a cut in a step that removes something is followed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Again {
    /// Only the restart.
    No,
    /// The restart after the cut that leaves it the most to finish is cut in
    /// turn at each of its operations.
    Busiest,
    /// The restart after every cut is cut in turn at each of its
    /// operations, the disk found with only the newest or with only the
    /// oldest unsynced change of each directory, alternately (a cut just
    /// before a directory `fsync` and the cut just after it leave the same
    /// disk, so each second cut after that disk is found both ways).
    EveryCut,
}

/// What removes something, cut at each of its operations in turn and found
/// with only the newest unsynced change of each directory (so a removal
/// made durable in the wrong order shows, such as an envelope left without
/// its data), and at every fourth cut point also with a random part of
/// what was not durable, out of order. (The scenario above cuts every
/// operation and finds only what was durable.) Then, after a truncation
/// and after a move past lost offsets, the cut that leaves the restart the
/// most to finish (a segment's deletion, the move) is followed by a second
/// cut at each operation of that restart, of the check after it and of an
/// append after that (which takes a truncated segment's base again), and
/// by another restart: it must find every acknowledged record, no shredded
/// envelope, deleted topic or removed segment back, and a log that takes
/// appends. A move that removes the empty segment file of the move before
/// it is followed by a second cut after *every* one of its cuts: one leaves
/// both empty files (the restart removes the older one), another the gap
/// marker alone (the restart finishes the move and removes the older one),
/// and the append after either writes the new file's header, synced, before
/// it syncs the directory: the restart's removal must be durable by then.
#[test]
fn removals_survive_a_cut_at_every_operation_and_a_second_cut_in_the_restart() {
    let ops = deletion_scenario();
    // The operations of each step that removes something, and how the
    // restart after a cut in it is cut in turn: after a truncation (it
    // finishes a segment's deletion, as after retention, and the append
    // then takes the deleted segment's base again) and after a move past
    // lost offsets (it finishes the move), the busiest cut; after a move
    // from the empty file an earlier move made, every cut. The random
    // cases cut restarts that finish a topic's deletion.
    let mut removals: Vec<(std::ops::RangeInclusive<u64>, Again)> = Vec::new();
    {
        let keys_dir = tempfile::tempdir().expect("key dir");
        let io = PowerLossIo::new();
        let mut world = World::boot(io.clone(), keys_dir.path()).expect("boot");
        let mut model = Model::default();
        let mut after_truncation = false;
        let mut after_move = false;
        for op in &ops {
            let before = io.ops();
            step(&mut world, &mut model, op).expect("uncut run");
            // And the append after a truncation, which takes the deleted
            // segment's base again.
            if after_truncation
                || matches!(
                    op,
                    Op::Retention { .. }
                        | Op::Truncate { .. }
                        | Op::Skip { .. }
                        | Op::Delete { .. }
                )
            {
                let again = match op {
                    Op::Skip { .. } if after_move => Again::EveryCut,
                    Op::Truncate { .. } | Op::Skip { .. } => Again::Busiest,
                    _ => Again::No,
                };
                removals.push((before..=io.ops(), again));
            }
            after_truncation = matches!(op, Op::Truncate { .. });
            after_move = matches!(op, Op::Skip { .. });
        }
        assert!(
            model.topics.iter().any(|t| t.deleted),
            "the scenario deletes a topic"
        );
    }
    assert!(
        removals.iter().any(|(_, a)| *a == Again::EveryCut),
        "the scenario moves from the empty file of a move: {removals:?}"
    );
    let cut_points: usize = removals.iter().map(|(r, _)| r.clone().count()).sum();
    assert!(cut_points > 50, "the removals do real work: {removals:?}");
    let first = |cut: u64, torn: Found| Epoch {
        ops: ops.clone(),
        cut_step: 0,
        cut_ops: u16::try_from(cut).expect("small"),
        boot_cut: None,
        torn,
    };
    // After the restart the log takes an append, and the power goes off
    // again when `boot_cut` says.
    let then = |boot_cut: Option<u16>, torn: Found| Epoch {
        ops: vec![Op::Append {
            topic: 0,
            partition: 0,
            records: 1,
            size: 20,
        }],
        cut_step: 2,
        cut_ops: 0,
        boot_cut,
        torn,
    };
    // Cuts `cut`, then the restart after it at each of its operations, the
    // check after it and the append after that, each found in `torn` ways.
    let cut_twice = |cut: u64, torn: &dyn Fn(u64) -> Vec<Found>| {
        let restart_ops = match run(&[first(cut, Found::NewestChange), then(None, Found::Durable)])
        {
            Ok(ops) => ops.first().copied().unwrap_or(0),
            Err(e) => {
                panic!("power cut after {cut} operations (NewestChange), then an append: {e}")
            }
        };
        for second in 0..=restart_ops {
            for torn in torn(second) {
                let again = then(Some(u16::try_from(second).expect("small")), torn);
                if let Err(e) = run(&[first(cut, Found::NewestChange), again]) {
                    panic!(
                        "power cut after {cut} operations, then {second} operations into the \
                         restart ({torn:?}): {e}"
                    );
                }
            }
        }
    };
    for (range, again) in removals {
        // The cut whose restart does the most, and how much.
        let mut busiest = (0, 0);
        for cut in range.clone() {
            match run(&[first(cut, Found::NewestChange)]) {
                Ok(ops) if ops.last().is_some_and(|o| *o > busiest.1) => {
                    busiest = (cut, ops.last().copied().unwrap_or(0));
                }
                Ok(_) => {}
                Err(e) => panic!("power cut after {cut} operations (NewestChange): {e}"),
            }
            if cut % 4 == 0
                && let Err(e) = run(&[first(cut, Found::Reordered(cut))])
            {
                panic!("power cut after {cut} operations (Reordered({cut})): {e}");
            }
        }
        match again {
            Again::No => {}
            Again::Busiest => cut_twice(busiest.0, &|second| {
                vec![if second % 2 == 0 {
                    Found::NewestChange
                } else {
                    Found::Reordered(busiest.0 ^ second)
                }]
            }),
            Again::EveryCut => {
                for cut in range {
                    cut_twice(cut, &|second| {
                        vec![if (cut + second) % 2 == 0 {
                            Found::NewestChange
                        } else {
                            Found::OldestChange
                        }]
                    });
                }
            }
        }
    }
}
