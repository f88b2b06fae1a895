//! A plugin built against a contract version this host does not implement
//! (`plugbus:plugin@0.2.0`). The host must refuse it and name both versions.

// wit-bindgen's export glue (expanded here, not in plugbus-sdk) is unsafe by
// nature: raw ABI functions. No hand-written unsafe in this file.
#![allow(unsafe_code)]

#[allow(missing_docs)]
mod bindings {
    wit_bindgen::generate!({
        inline: r#"
            package plugbus:plugin@0.2.0;

            interface handler {
                init: func() -> result<string, string>;
            }

            world plugin {
                export handler;
            }
        "#,
        world: "plugin",
    });
}

struct V2;

impl bindings::exports::plugbus::plugin::handler::Guest for V2 {
    fn init() -> Result<String, String> {
        Ok("v2".into())
    }
}

bindings::export!(V2 with_types_in bindings);
