use proptest::prelude::*;

use super::*;

fn sample() -> GameEvent {
    GameEvent {
        v: 1,
        event_id: "e-1".into(),
        hunt_id: "winter-2026".into(),
        shard_id: "shard-0".into(),
        region: "eu".into(),
        player_id: "p-42".into(),
        tier: "gold".into(),
        kind: EventKind::ChestOpened,
        chest_key: Some("chest-7".into()),
        points: 30,
        event_time: 1_767_225_600_000,
    }
}

fn with(json: &str) -> Result<GameEvent, DecodeError> {
    decode(json.as_bytes(), 16_384)
}

#[test]
fn each_kind_of_bad_event_names_what_is_wrong() {
    let ok = String::from_utf8(sample().encode()).unwrap();
    assert_eq!(with(&ok.replace("\"points\":30", "\"points\":-5")), Err(DecodeError::NegativePoints(-5)));
    assert_eq!(with(&ok.replace("chest_opened", "flew")).unwrap_err().code(), "unknown_kind");
    assert_eq!(with(&ok.replace("\"v\":1", "\"v\":2")), Err(DecodeError::UnsupportedVersion(2)));
    assert_eq!(with(&ok.replace("\"e-1\"", "\"\"")), Err(DecodeError::EmptyField("event_id")));
    assert_eq!(with(&ok.replace(",\"chest_key\":\"chest-7\"", "")), Err(DecodeError::MissingChestKey));
    assert_eq!(with(&ok.replace("\"points\"", "\"pionts\"")).unwrap_err().code(), "malformed");
    assert_eq!(with("{not json").unwrap_err().code(), "malformed");
    assert_eq!(decode(&[b'{', 0xff, b'}'], 100), Err(DecodeError::BadUtf8 { valid_up_to: 1 }));
    assert_eq!(decode(ok.as_bytes(), 10), Err(DecodeError::Oversized { size: ok.len(), limit: 10 }));
}

#[test]
fn claim_key_is_the_chest_for_chests_and_the_event_id_otherwise() {
    let chest = sample();
    assert_eq!(chest.claim_key(), "chest-7");
    let clue = GameEvent { kind: EventKind::ClueSolved, chest_key: None, ..sample() };
    assert_eq!(clue.claim_key(), "e-1");
}

fn arb_event() -> impl Strategy<Value = GameEvent> {
    let id = "[a-zA-Z0-9_\\-\\.é\"\\\\ ]{1,40}";
    (id, id, id, id, id, id, 0u8..3, id, any::<u32>(), 0i64..4_000_000_000_000).prop_map(
        |(event_id, hunt_id, shard_id, region, player_id, tier, k, chest, points, event_time)| {
            let kind = [EventKind::ChestOpened, EventKind::ClueSolved, EventKind::MilestoneReached][k as usize];
            GameEvent {
                v: 1,
                event_id,
                hunt_id,
                shard_id,
                region,
                player_id,
                tier,
                kind,
                chest_key: (kind == EventKind::ChestOpened).then_some(chest),
                points: points as u64,
                event_time,
            }
        },
    )
}

proptest! {
    #[test]
    fn encode_then_decode_is_identity(event in arb_event()) {
        prop_assert_eq!(decode(&event.encode(), 1 << 20), Ok(event));
    }

    #[test]
    fn any_bytes_decode_or_error_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes, 256);
    }

    #[test]
    fn json_like_text_decodes_or_errors_without_panic(text in "\\{(\"[a-z_]{1,10}\":(-?[0-9]{1,20}|\"[^\"]{0,10}\"|null),?){0,12}\\}") {
        let _ = decode(text.as_bytes(), 16_384);
    }
}
