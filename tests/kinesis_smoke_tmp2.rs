mod common;
#[test]
fn fails_clearly() {
    let _k = common::kinesis::KinesisLocal::start();
}
