//! A valid component of a different world (`test:greeter/greeter`): the host
//! must refuse it as "a component of another world".

#[cfg(target_family = "wasm")]
mod component {
    wit_bindgen::generate!({ path: "wit", world: "greeter" });

    struct Greeter;

    impl Guest for Greeter {
        fn greet(name: String) -> String {
            format!("hello, {name}")
        }
    }

    export!(Greeter);
}
