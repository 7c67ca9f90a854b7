//! A plugin from the future: it exports `engine:plugin/provider@0.2.0`, a version this engine
//! does not implement. The host must refuse it with an error naming both versions.

wit_bindgen::generate!({
    inline: r#"
        package engine:plugin@0.2.0;

        interface provider {
            info: func() -> string;
        }

        world future-provider {
            export provider;
        }
    "#,
});

struct FromTheFuture;

impl exports::engine::plugin::provider::Guest for FromTheFuture {
    fn info() -> String {
        "from the future".into()
    }
}

export!(FromTheFuture);
