//! The conformance suite: docs/PROTOCOL.md checked rule by rule against a
//! real `strongbox-broker` process, over real QUIC connections, with
//! frames built and read by hand through the protocol crate's codec (never
//! through the client crate, whose end-to-end module only signs the one
//! recipient entry `Q14` stores: payload to the broker).
//!
//! Every rule of the specification carries a label (`[C3]`); each label has
//! exactly one test here, named after it, whose doc comment quotes the
//! section it checks. Each test starts a development broker of its own
//! (about a tenth of a second), so the tests run in parallel and one
//! failure leaves the others meaningful. `every_rule_has_a_test` fails when
//! the specification and this checklist disagree.
//!
//! Damaged, read-only and unavailable partitions are made for real: the
//! broker is stopped, its files changed and the broker started again
//! (`damage.rs`). A full disk, a failing fsync and a read that fails when
//! a log is opened cannot be caused from outside a process on demand; those
//! tests (`storage_faults.rs`, marked in-process below) run the broker in
//! the test's process with its logs on the fault-injecting I/O backend,
//! and speak to it over QUIC like the others.
//!
//! Labels beginning with `L` are rules of the peer protocol between cluster
//! nodes; their tests run real peer endpoints of the `strongbox-peer` crate
//! over QUIC on 127.0.0.1, in `peer/tests/`.
//!
//! Labels ending in `c` are obligations of the client, which no broker test
//! can check; the checklist names the tests of the reference client that do.
//!
//! ## Checklist: rule → test
//!
//! | label | rule | test |
//! | --- | --- | --- |
//! | T1 | Transport: a handshake without ALPN `strongbox/1` is refused | `transport::t1_a_handshake_without_the_alpn_is_refused` |
//! | T2 | Transport: no valid client certificate, no frame | `transport::t2_no_client_certificate_no_frame` |
//! | T3 | Transport: the principal comes from the certificate | `transport::t3_the_principal_comes_from_the_certificate` |
//! | T4 | Transport: the broker opens no streams | `transport::t4_the_broker_opens_no_streams` |
//! | T5 | Transport: QUIC application codes are error codes | `transport::t5_quic_codes_are_error_codes` |
//! | T6 | Transport: a restarted broker resets the connections it lost | `transport::t6_a_restarted_broker_resets_the_connections_it_lost` |
//! | F1 | Frames: never above the receiver's `max_frame_size` | `frames::f1_no_frame_exceeds_the_clients_maximum` |
//! | F2 | Frames: negotiation cannot fail later (cut `Records`, `frame_too_large` answers) | `frames::f2_records_are_cut_to_fit_and_long_answers_are_refused` |
//! | F3 | Frames: an oversize length, refused before the body | `frames::f3_an_oversize_length_is_refused_before_the_body` |
//! | F4 | Frames: a length below 2 is `malformed_frame` | `frames::f4_a_length_below_two_is_malformed` |
//! | F5 | Frames: trailing bytes are `malformed_frame` | `frames::f5_trailing_bytes_are_malformed` |
//! | F6 | Frames: a truncated body or stream is `malformed_frame` | `frames::f6_a_truncated_body_or_stream_is_malformed` |
//! | F7 | Frames: an unknown type is `unknown_frame_type` | `frames::f7_an_unknown_type_is_unknown_frame_type` |
//! | F8 | Frames: an undecodable frame ends only its stream | `frames::f8_a_bad_frame_ends_only_its_stream` |
//! | F9 | Frames: a frame on the wrong stream is `protocol_violation` | `frames::f9_a_frame_on_the_wrong_stream_is_a_violation` |
//! | E1 | Primitive encodings: `bool` | `encodings::e1_a_bool_other_than_0_or_1_is_malformed` |
//! | E2 | Primitive encodings: UTF-8 strings | `encodings::e2_a_string_that_is_not_utf8_is_malformed` |
//! | E3 | Primitive encodings: `option` tags | `encodings::e3_an_option_tag_other_than_0_or_1_is_malformed` |
//! | E4 | Primitive encodings: enumeration tags | `encodings::e4_an_unknown_enum_tag_is_malformed` |
//! | E5 | Primitive encodings: list counts | `encodings::e5_a_list_count_the_body_cannot_hold_is_malformed` |
//! | C1 | Control stream: `Welcome` with the highest common version | `control::c1_welcome_has_the_highest_common_version` |
//! | C2 | Control stream: `unsupported_version` | `control::c2_no_common_version_is_unsupported_version` |
//! | C3 | Control stream: a first frame other than `Hello` | `control::c3_a_first_frame_other_than_hello_is_a_violation` |
//! | C4 | Control stream: `max_frame_size` out of range | `control::c4_a_max_frame_size_out_of_range_is_a_violation` |
//! | C5 | Control stream: `frame_size_too_small` | `control::c5_a_frame_size_too_small_for_a_batch_is_refused` |
//! | C6 | Control stream: handshake timeout | `control::c6_no_hello_in_time_is_timeout` |
//! | C7 | Control stream: no control stream in time | `control::c7_no_control_stream_in_time_is_timeout` |
//! | C8c | Control stream: the client checks `Welcome` | `protocol/tests/session_props.rs::client_control_follows_the_rules` |
//! | C9 | Control stream: nothing served before `Welcome` | `control::c9_no_stream_is_served_before_welcome` |
//! | C10 | Control stream: `Ping` answered with `Pong` | `control::c10_ping_is_answered_with_the_same_nonce` |
//! | C11 | Control stream: a `Pong` without `Ping` | `control::c11_a_pong_without_a_ping_is_unexpected` |
//! | C12 | Control stream: `Goodbye`, then a close with its code | `control::c12_the_brokers_goodbye_precedes_a_close_with_its_code` |
//! | C13 | Control stream: a second `Hello` | `control::c13_a_second_hello_is_unexpected` |
//! | C14 | Control stream: another stream's frame | `control::c14_another_kind_of_frame_on_control_is_a_violation` |
//! | C15 | Control stream: keep-alive pings, one outstanding | `control::c15_pings_come_one_at_a_time` |
//! | C16 | Control stream: silence is `timeout` | `control::c16_a_silent_client_is_closed_with_timeout` |
//! | C17 | Control stream: the `Error` arrives before the close | `control::c17_the_error_arrives_before_the_close` |
//! | C18c | Control stream: the client reports broker violations (the machine decides the code; the client crate sends it in `Goodbye`) | `protocol/tests/session_props.rs::client_control_follows_the_rules` |
//! | C19c | Control stream: `keepalive_ms` 0 leaves the client's interval | `protocol/tests/session_props.rs::established_client_control_follows_the_rules` |
//! | S1 | Stream kinds: one rule for first frames | `streams::s1_a_stream_must_start_with_an_opening_frame` |
//! | S2 | Ending a stream with an error | `streams::s2_an_error_ends_the_stream_with_a_finish_not_a_reset` |
//! | P1 | Producer stream: answers in order | `producer::p1_answers_come_in_request_order` |
//! | P2 | Producer stream: correlation id 0 | `producer::p2_correlation_id_zero_is_a_violation` |
//! | P3 | Producer stream: correlation ids increase | `producer::p3_a_correlation_id_that_does_not_increase_is_a_violation` |
//! | P4 | Producer stream: `limit_exceeded` past `max_in_flight` | `producer::p4_more_than_max_in_flight_is_limit_exceeded` |
//! | P5 | Producer stream: per-request failures | `producer::p5_a_per_request_failure_leaves_the_stream_open` |
//! | P6 | Producer stream: a violation answers every batch read first | `producer::p6_a_violation_answers_every_batch_read_before_it` |
//! | P7 | Producer stream: finishing | `producer::p7_finishing_answers_what_is_in_flight` |
//! | P8 | Producer stream: shutdown | `producer::p8_shutdown_answers_every_batch_read` |
//! | P9c | Producer stream: the client checks answer order | `protocol/tests/session_props.rs::producer_session_follows_the_rules` |
//! | P10 | Producer stream: `storage_full`, `storage_failed`, retriable (in-process: only a fault-injecting I/O backend fills a disk on demand) | `storage_faults::p10_a_failed_write_or_sync_is_storage_full_or_storage_failed` |
//! | P11 | Producer stream: `partition_read_only`, `data_damaged` | `partition_states::p11_read_only_and_damaged_partitions_refuse_each_batch` |
//! | P12 | Producer and subscription streams: `partition_unavailable` (in-process: a read that fails at start) | `storage_faults::p12_a_log_that_cannot_be_opened_is_partition_unavailable` |
//! | P13 | Producer stream: `key_unavailable`, retriable | `producer::p13_a_segment_without_a_key_is_key_unavailable` |
//! | U1 | Subscription stream: `Assignment` first | `subscription::u1_subscribe_is_answered_with_assignment` |
//! | U2 | Subscription stream: `not_authorized` | `subscription::u2_not_authorized` |
//! | U3 | Subscription stream: `unknown_topic` | `subscription::u3_unknown_topic` |
//! | U4 | Subscription stream: `unknown_partition` | `subscription::u4_unknown_partition` |
//! | U5 | Subscribe: group names, `invalid_group` | `subscription::u5_invalid_group_names` |
//! | U6 | Subscription stream: `offset_out_of_range` | `subscription::u6_offset_out_of_range` |
//! | U7 | Subscription stream: generation 0 for one partition | `subscription::u7_a_single_partition_assignment_has_generation_0` |
//! | U8 | Subscription stream: group generations | `subscription::u8_group_generations_grow_with_rebalances` |
//! | U9 | Subscription stream: resume from the committed offset | `subscription::u9_a_group_resumes_from_its_committed_offset` |
//! | U10 | Subscription stream: start positions | `subscription::u10_start_positions` |
//! | U11 | Subscription stream: a start inside a batch sends the whole batch | `subscription::u11_a_start_inside_a_batch_sends_the_whole_batch` |
//! | U12c | Subscription stream: the client skips records below `next_offset` | `tests/tests/e2e_start_offsets.rs::the_client_delivers_from_next_offset_inside_a_batch` |
//! | U13 | Subscription stream: credit | `subscription::u13_records_only_within_credit` |
//! | U14c | Subscription stream: the client refuses `Records` without credit | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | U15 | Subscription stream: `Records` contents and order | `subscription::u15_records_follow_the_assignment_in_offset_order` |
//! | U16c | Subscription stream: the client checks `Records` | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | U17 | Subscription stream: `CommitAck` in order | `subscription::u17_commits_are_acknowledged_in_order` |
//! | U18 | Subscription stream: commit without a group | `subscription::u18_commit_without_a_group_is_invalid_request` |
//! | U19 | Subscription stream: `not_assigned` | `subscription::u19_commit_for_an_unassigned_partition_is_not_assigned` |
//! | U20c | Subscription stream: the client matches `CommitAck`s | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | U21 | Subscription stream: `Unsubscribe`, finish, `SubscriptionEnd` 0 | `subscription::u21_unsubscribe_then_finish_ends_with_code_0` |
//! | U22 | Subscription stream: a frame after `Unsubscribe` | `subscription::u22_a_frame_after_unsubscribe_is_a_violation` |
//! | U23 | Subscription stream: finishing without `Unsubscribe` | `subscription::u23_finishing_without_unsubscribe_ends_normally` |
//! | U24 | Subscription stream: a deleted topic | `subscription::u24_deleting_the_topic_ends_with_unknown_topic` |
//! | U25 | Subscription stream: `shutting_down` before the close | `subscription::u25_shutdown_ends_every_subscription_before_the_close` |
//! | U26 | Subscription stream: a second `Subscribe` | `subscription::u26_a_second_subscribe_is_unexpected` |
//! | U27 | Subscription stream: another stream's frame | `subscription::u27_another_kind_of_frame_is_a_violation` |
//! | U28c | Subscription stream: frames before `Assignment` | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | U29 | Damaged partitions: the readable batches, then `PartitionError` with the range | `damaged_partitions::u29_the_readable_records_then_the_damaged_range` |
//! | U30 | Damaged partitions: `SKIP_DAMAGED` goes on after a known end | `damaged_partitions::u30_skip_damaged_goes_on_after_a_known_end` |
//! | U31 | Damaged partitions: `PartitionError` costs no credit | `damaged_partitions::u31_partition_error_costs_no_credit` |
//! | U32c | Damaged partitions: the client checks `PartitionError` and what follows | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | U33 | Damaged partitions: the other partitions are not affected | `damaged_partitions::u33_the_other_partitions_are_not_affected` |
//! | U34 | Damaged partitions: a reported partition stops; a single partition ends | `damaged_partitions::u34_a_reported_partition_stops` |
//! | U38 | Damaged partitions: records of a destroyed key are reported with `key_destroyed` | `damaged_partitions::u38_records_of_a_destroyed_key_are_reported_per_partition` |
//! | U35 | Subscription stream: frames after `Subscribe` wait for its answer | `subscription::u35_frames_after_subscribe_are_handled_after_the_answer` |
//! | U36 | Subscription stream: a commit past the end is `offset_out_of_range` | `subscription::u36_a_commit_past_the_end_is_offset_out_of_range` |
//! | U37c | Subscription stream: the client refuses frames after `SubscriptionEnd` | `protocol/tests/session_props.rs::subscriber_session_follows_the_rules` |
//! | B1 | Subscribe: `start_value` 0 for earliest and latest | `subscription::b1_start_value_must_be_zero_for_earliest_and_latest` |
//! | B2 | Subscribe: `flags` other than `SKIP_DAMAGED` | `subscription::b2_unknown_subscribe_flags_are_malformed` |
//! | B3 | Error: no payload or key material in messages | `producer::b3_error_messages_hold_no_payload_or_key_material` |
//! | A1 | Admin stream: the response the table names | `admin::a1_each_request_gets_its_response` |
//! | A2 | Admin stream: the broker finishes after the client | `admin::a2_the_broker_finishes_after_the_client` |
//! | A3 | Admin stream: a second request | `admin::a3_a_second_request_is_a_violation` |
//! | A4 | Admin requests: `not_authorized` | `admin::a4_requests_the_acl_forbids_are_not_authorized` |
//! | V1 | Durability: combinations outside the table | `admin::v1_durability_outside_the_table_is_malformed` |
//! | V2 | TopicConfig: retention absent, a limit, or none | `admin::v2_retention_absent_is_the_default_and_zero_is_no_limit` |
//! | V3 | TopicConfig: `invalid_config` | `admin::v3_out_of_range_configs_are_invalid_config` |
//! | V4 | Operations: bits 10–15 | `admin::v4_unknown_operation_bits_are_malformed` |
//! | V5 | CreateTopic: topic names | `admin::v5_bad_topic_names_are_refused` |
//! | V6 | CreateTopic: `topic_exists` | `admin::v6_an_existing_name_is_topic_exists` |
//! | V7 | PartitionState: states and errors described, reads as the table says | `partition_states::v7_describe_reports_each_partition_state` |
//! | V8 | PartitionState: `fenced` serves reads and resumes by itself (in-process, as P10) | `storage_faults::v8_a_fenced_partition_serves_reads_and_resumes_by_itself` |
//! | V9 | TopicRecover: `admin`, `invalid_request`, `conflict` | `partition_states::v9_recover_needs_admin_and_a_read_only_partition` |
//! | V10 | TopicRecover: the answer, writes after every acknowledged offset, audited | `partition_states::v10_recover_resumes_writes_after_every_acknowledged_offset` |
//! | V11 | ListTopics: what the caller may describe, by prefix | `admin::v11_list_topics_shows_what_the_caller_may_describe` |
//! | V12 | TopicInfo: a topic id is never reused | `admin::v12_a_topic_id_is_never_reused` |
//! | V13 | AclRule: patterns, deny wins, no allow is no access | `admin::v13_deny_wins_and_no_allow_is_no_access` |
//! | Q1 | KeyDestroy: `key_in_use` | `admin::q1_destroying_a_key_in_use_is_key_in_use` |
//! | Q2 | AccessRequest: `invalid_request` | `admin::q2_invalid_access_requests` |
//! | Q3 | AccessRequest: `unknown_topic` | `admin::q3_access_to_an_unknown_topic` |
//! | Q4 | AccessRequest: `conflict` | `admin::q4_the_same_request_pending_is_conflict` |
//! | Q5 | AccessApprove: `not_authorized` | `admin::q5_approving_without_grant_is_not_authorized` |
//! | Q6 | AccessApprove: `conflict` | `admin::q6_approving_a_decided_request_is_conflict` |
//! | Q7 | AccessApprove: `invalid_request` | `admin::q7_a_recipient_entry_without_a_key_is_invalid` |
//! | Q8 | AccessDeny: `not_authorized` | `admin::q8_denying_without_grant_is_not_authorized` |
//! | Q9 | AccessDeny: `conflict` | `admin::q9_denying_a_decided_request_is_conflict` |
//! | Q10 | RecipientList: `not_authorized` | `admin::q10_listing_recipients_needs_describe_or_subscribe` |
//! | Q11 | RecipientPut: `invalid_request` | `admin::q11_a_bad_recipient_entry_is_invalid` |
//! | Q12 | RecipientRemove: `not_found` | `admin::q12_removing_an_unknown_recipient_is_not_found` |
//! | Q13 | AccessList: own requests and granted topics, oldest first | `admin::q13_access_list_shows_own_requests_and_granted_topics` |
//! | Q14 | RecipientEntry: stored and returned unchanged | `admin::q14_recipient_entries_come_back_unchanged` |
//! | R0 | The record batch: delivered unchanged | `batch::r0_batches_are_delivered_unchanged` |
//! | R1 | Validation 1: header | `batch::r1_header_magic_version_and_reserved_flags` |
//! | R2 | Validation 2: `unsupported_codec` | `batch::r2_a_codec_is_unsupported_codec` |
//! | R3 | Validation 3: producer fields | `batch::r3_producer_fields_without_the_flag` |
//! | R4 | Validation 4: counts and lengths | `batch::r4_record_count_and_body_length` |
//! | R5 | Validation 5: `corrupt_batch` | `batch::r5_a_crc_mismatch_is_corrupt_batch` |
//! | R6 | Validation 6: record framing | `batch::r6_record_framing` |
//! | R7 | Validation 7: `max_batch_size` | `batch::r7_a_batch_over_max_batch_size_is_frame_too_large` |
//! | I1 | Idempotent producers: `InitProducer` needs publish | `idempotence::i1_init_producer_needs_publish_somewhere` |
//! | I2 | Idempotent producers: another principal's id | `idempotence::i2_another_principals_id_is_producer_not_owned` |
//! | I3 | Idempotent producers: resuming another principal's id | `idempotence::i3_resuming_another_principals_id_is_refused` |
//! | I4 | Idempotent producers: an epoch never issued | `idempotence::i4_an_epoch_never_issued_is_refused` |
//! | I5 | Idempotent producers: `unknown_producer` | `idempotence::i5_an_unknown_id_is_unknown_producer` |
//! | I6 | Idempotent producers: `producer_fenced` | `idempotence::i6_an_older_epoch_is_fenced` |
//! | I7 | Idempotent producers: the next sequence | `idempotence::i7_the_next_sequence_is_appended` |
//! | I8 | Idempotent producers: duplicates | `idempotence::i8_a_retry_is_a_duplicate_not_a_second_copy` |
//! | I9 | Idempotent producers: `out_of_order_sequence` | `idempotence::i9_a_gap_is_out_of_order` |
//! | I10 | Idempotent producers: resuming bumps the epoch | `idempotence::i10_resuming_bumps_the_epoch` |
//! | I11 | Idempotent producers: the last `max_in_flight` batches are remembered | `idempotence::i11_the_last_max_in_flight_batches_are_remembered` |
//! | K1c | Error codes: receivers keep unknown codes | `client/src/error.rs::unknown_codes_keep_the_number` |
//! | M1 | Metadata: a single node leads every partition; topics the caller may not describe are left out | `cluster::m1_metadata_of_a_single_node` |
//! | M2 | ClusterStatus: `describe` on `*`; a single node is the leader of term 1 | `cluster::m2_cluster_status_of_a_single_node` |
//! | M3 | ClusterAddNode, ClusterRemoveNode: `admin` on `*`, `invalid_request` on a single node, audited | `cluster::m3_membership_changes_on_a_single_node` |
//! | M4c | Leaders: the client follows a `not_leader` hint a bounded number of times | `client/tests/loopback.rs::admin_requests_follow_not_leader_hints` |
//! | N1 | Versioning: unknown feature bits | `versioning::n1_unknown_feature_bits_are_ignored` |
//! | L1 | Peer protocol: a certificate of another CA is refused | `peer/tests/mtls.rs::a_certificate_from_a_foreign_ca_is_refused` |
//! | L2 | Peer protocol: an expired certificate is refused | `peer/tests/mtls.rs::an_expired_node_certificate_is_refused` |
//! | L3 | Peer protocol: a certificate that names no node is refused | `peer/tests/mtls.rs::a_client_certificate_is_refused_on_the_peer_port` |
//! | L4 | Peer protocol: a node of another trust domain is refused | `peer/tests/mtls.rs::a_node_certificate_of_another_trust_domain_is_refused` |
//! | L5 | Peer protocol: a node that is not a member is refused | `peer/tests/mtls.rs::a_node_that_is_not_a_member_is_refused_at_the_handshake` |
//! | L6 | Peer protocol: the dialer checks the node id it dialed | `peer/tests/mtls.rs::dialing_a_node_that_answers_with_another_id_fails` |
//! | L7 | Peer protocol: a length above the maximum is `payload_too_large` | `peer/tests/rpc.rs::oversized_frames_are_refused_from_the_header` |
//! | L8 | Peer protocol: a malformed frame ends only its stream | `peer/tests/rpc.rs::malformed_frames_close_only_their_stream` |
//! | L9 | Peer protocol: a claimed sender other than the certificate's node | `peer/tests/mtls.rs::a_request_claiming_another_node_id_is_refused_and_closes_the_connection` |
//! | L10 | Peer protocol: membership checked on every request | `peer/tests/mtls.rs::a_node_removed_while_connected_is_refused_at_its_next_request` |

mod admin;
mod batch;
mod cluster;
mod control;
mod damage;
mod damaged_partitions;
mod encodings;
mod frames;
mod harness;
mod idempotence;
mod partition_states;
mod producer;
mod storage_faults;
mod streams;
mod subscription;
mod transport;
mod versioning;

use std::collections::BTreeMap;
use std::path::Path;

fn workspace() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The labels docs/PROTOCOL.md gives its rules, each once.
fn spec_labels() -> Vec<String> {
    let spec =
        std::fs::read_to_string(workspace().join("docs/PROTOCOL.md")).expect("docs/PROTOCOL.md");
    let mut labels = Vec::new();
    let mut rest = spec.as_str();
    while let Some(open) = rest.find('[') {
        rest = &rest[open + 1..];
        let Some(close) = rest.find(']') else { break };
        let inside = &rest[..close];
        let mut chars = inside.chars();
        let is_label = chars.next().is_some_and(|c| c.is_ascii_uppercase())
            && inside.len() > 1
            && inside[1..]
                .trim_end_matches('c')
                .chars()
                .all(|c| c.is_ascii_digit())
            && inside[1..]
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit());
        if is_label {
            labels.push(inside.to_owned());
        }
    }
    labels
}

/// The checklist above: label → test.
fn checklist() -> BTreeMap<String, String> {
    let source = include_str!("main.rs");
    source
        .lines()
        .filter_map(|l| l.strip_prefix("//! | "))
        .filter_map(|row| {
            let cells: Vec<&str> = row.trim_end_matches(" |").split(" | ").collect();
            let label = cells.first()?.trim();
            let test = cells.last()?.trim().trim_matches('`');
            (label != "label" && label != "---").then(|| (label.to_owned(), test.to_owned()))
        })
        .collect()
}

/// docs/PROTOCOL.md and the checklist name the same rules, every rule has
/// a test that exists, and a broker rule's test cites its label.
#[test]
fn every_rule_has_a_test() {
    let labels = spec_labels();
    let mut seen = std::collections::BTreeSet::new();
    for label in &labels {
        assert!(
            seen.insert(label),
            "docs/PROTOCOL.md labels two rules [{label}]"
        );
    }
    let checklist = checklist();
    let in_spec: std::collections::BTreeSet<&String> = labels.iter().collect();
    let in_list: std::collections::BTreeSet<&String> = checklist.keys().collect();
    let missing: Vec<_> = in_spec.difference(&in_list).collect();
    assert!(
        missing.is_empty(),
        "rules without a test in the checklist: {missing:?}"
    );
    let stale: Vec<_> = in_list.difference(&in_spec).collect();
    assert!(
        stale.is_empty(),
        "checklist rows for rules the spec no longer has: {stale:?}"
    );
    for (label, test) in &checklist {
        let (file, name) = match test.split_once(".rs::") {
            Some((path, name)) => (workspace().join(format!("{path}.rs")), name),
            None => {
                let (module, name) = test.split_once("::").expect("module::test");
                (
                    Path::new(env!("CARGO_MANIFEST_DIR"))
                        .join(format!("tests/conformance/{module}.rs")),
                    name,
                )
            }
        };
        let source = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("[{label}]: {}: {e}", file.display()));
        let at = source
            .find(&format!("fn {name}("))
            .unwrap_or_else(|| panic!("[{label}]: no fn {name} in {}", file.display()));
        if !label.ends_with('c') {
            // The doc comment right above the test cites the label.
            let before = &source[..at];
            let doc_start = before.rfind("\n\n").map_or(0, |i| i + 2);
            assert!(
                before[doc_start..].contains(&format!("[{label}]")),
                "[{label}]: {name} does not cite its rule"
            );
        }
    }
}
