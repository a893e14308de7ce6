//! The epoch-fenced output producer against the real broker: what it
//! produces is read back exactly (order, keys, values, repeated headers, the
//! id header), and once a second producer fenced the same transactional id,
//! the first one's held records are refused and never appear.

mod common;

use std::time::Duration;

use common::broker::Broker;
use common::verify::read_partition;
use logstream_host::pipeline::fenced::{FencedProducer, ProduceError};
use logstream_host::pipeline::kafka::{
    ensure_topics, is_fence_record, Outgoing, PartitionReader, FENCE_HEADER, ID_HEADER,
};
use logstream_host::wasm::bindings::Header;

const READ_BOUND: Duration = Duration::from_secs(30);

fn outgoing<'a>(value: &'a [u8], id: &'a str, headers: &'a [Header]) -> Outgoing<'a> {
    Outgoing {
        topic: "out",
        partition: 1,
        key: Some(b"key"),
        value,
        headers,
        id: Some(id),
    }
}

#[test]
fn records_arrive_exactly_and_a_fenced_producer_gets_nothing_in() {
    let broker = Broker::start();
    ensure_topics(&broker.address, &[("out", 2)]).unwrap();

    let mut first = FencedProducer::open(&broker.address, "logstream/test/0").unwrap();
    assert_eq!(first.partition_count("out").unwrap(), 2);
    let identity = first.fence().unwrap();
    let headers = vec![
        Header {
            key: "h".into(),
            value: b"1".to_vec(),
        },
        Header {
            key: "h".into(),
            value: b"2".to_vec(),
        },
    ];
    for i in 0..5 {
        let value = format!("first-{i}");
        first
            .send(&outgoing(value.as_bytes(), &format!("id-{i}"), &headers))
            .unwrap();
    }
    first.flush().unwrap();
    assert_eq!(first.watermarks("out", 1).unwrap(), (0, 5));

    // A second holder of the id (a successor) fences the first.
    let mut second = FencedProducer::open(&broker.address, "logstream/test/0").unwrap();
    let newer = second.fence().unwrap();
    assert_eq!(
        newer.id, identity.id,
        "the transactional id keeps its producer id"
    );
    assert!(newer.epoch > identity.epoch, "{newer:?} after {identity:?}");

    // The zombie's held records are refused...
    first
        .send(&outgoing(b"zombie", "id-zombie", &headers))
        .unwrap();
    match first.flush() {
        Err(ProduceError::Fenced { epoch, .. }) => assert_eq!(epoch, identity.epoch),
        other => panic!("the fenced producer's flush returned {other:?}"),
    }
    // ... and the successor's go in.
    second.send(&outgoing(b"second", "id-5", &headers)).unwrap();
    second.flush().unwrap();

    let records = read_partition(&broker.address, "out", 1, READ_BOUND);
    let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [
            &b"first-0"[..],
            b"first-1",
            b"first-2",
            b"first-3",
            b"first-4",
            b"second"
        ]
    );
    let first_record = &records[0];
    assert_eq!(first_record.key.as_deref(), Some(&b"key"[..]));
    let header_list: Vec<(&str, &[u8])> = first_record
        .headers
        .iter()
        .map(|h| (h.key.as_str(), &h.value[..]))
        .collect();
    assert_eq!(
        header_list,
        [(ID_HEADER, &b"id-0"[..]), ("h", b"1"), ("h", b"2")]
    );
    assert!(read_partition(&broker.address, "out", 0, READ_BOUND).is_empty());
}

#[test]
fn a_flush_larger_than_one_request_arrives_whole_and_in_order() {
    let broker = Broker::start();
    ensure_topics(&broker.address, &[("big", 1)]).unwrap();
    let mut producer = FencedProducer::open(&broker.address, "logstream/big/0").unwrap();
    producer.fence().unwrap();
    // ~3 MiB: several produce requests in one flush.
    let value = vec![b'x'; 10_000];
    let count = 300;
    for i in 0..count {
        let id = format!("big-{i}");
        producer
            .send(&Outgoing {
                topic: "big",
                partition: 0,
                key: None,
                value: &value,
                headers: &[],
                id: Some(&id),
            })
            .unwrap();
    }
    producer.flush().unwrap();
    let records = read_partition(&broker.address, "big", 0, READ_BOUND);
    assert_eq!(records.len(), count);
    for (i, record) in records.iter().enumerate() {
        assert_eq!(record.headers[0].value, format!("big-{i}").into_bytes());
        assert_eq!(record.value.len(), value.len());
    }
}

/// `write_fences` writes one fence record per partition at the current
/// epoch (no key, no value, the `logstream-fence` header naming the
/// producer), acknowledged before it returns with their offsets; consumers
/// that read through
/// `verify::read_partition` (as LogStream's inputs do) skip them; and the
/// producer goes on in sequence after them.
#[test]
fn fence_records_mark_every_partition_at_the_new_epoch_and_are_skipped_by_readers() {
    let broker = Broker::start();
    ensure_topics(&broker.address, &[("out", 2), ("dlq", 1)]).unwrap();
    let mut producer = FencedProducer::open(&broker.address, "logstream/test/1").unwrap();
    let identity = producer.fence().unwrap();
    let targets = [
        ("out".to_string(), 0),
        ("out".to_string(), 1),
        ("dlq".to_string(), 0),
    ];
    let offsets = producer.write_fences(&targets).unwrap();
    assert_eq!(
        offsets,
        targets.iter().map(|tp| (tp.clone(), 0)).collect(),
        "each fence record's offset, as the broker acknowledged it"
    );
    for (topic, partition) in &targets {
        assert_eq!(
            producer.watermarks(topic, *partition).unwrap(),
            (0, 1),
            "one fence record on {topic}/{partition}"
        );
        let reader = PartitionReader::open(&broker.address, topic, *partition, Some(0)).unwrap();
        let raw = reader
            .poll_batch(10, 1 << 20, READ_BOUND, Duration::ZERO)
            .unwrap();
        assert_eq!(raw.len(), 1);
        assert!(is_fence_record(&raw[0]));
        assert!(raw[0].key.is_none() && raw[0].value.is_empty());
        let named = &raw[0]
            .headers
            .iter()
            .find(|h| h.key == FENCE_HEADER)
            .unwrap()
            .value;
        assert_eq!(
            String::from_utf8_lossy(named),
            format!("logstream/test/1@{}", identity.epoch)
        );
        assert!(read_partition(&broker.address, topic, *partition, READ_BOUND).is_empty());
    }
    // Outputs follow the fence records in sequence.
    producer.send(&outgoing(b"after", "id-after", &[])).unwrap();
    producer.flush().unwrap();
    let records = read_partition(&broker.address, "out", 1, READ_BOUND);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].value, b"after");
    assert_eq!(records[0].offset, 1);
    // Fence records must be an epoch's first records.
    producer.send(&outgoing(b"held", "id-held", &[])).unwrap();
    assert!(matches!(
        producer.write_fences(&targets),
        Err(ProduceError::Other(_))
    ));
}
