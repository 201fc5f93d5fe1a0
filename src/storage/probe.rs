//! Test support: records the statements that connections to probe
//! databases run. A probe database is one whose path contains `probe-`
//! followed by the probe's name and a dot, such as `probe-checkout.db`.
//!
//! Diesel takes one process-wide default instrumentation, and tests run in
//! parallel in one process, so every test installs this same one and reads
//! only its own probe's statements.

use std::sync::Mutex;

use diesel::connection::{Instrumentation, InstrumentationEvent};

/// `(probe, statement)` for every statement run on a probe database.
static STATEMENTS: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Records the statements of connections opened from now on.
pub fn install() {
    diesel::connection::set_default_instrumentation(|| Some(Box::new(Probe::default()))).expect("install the probe");
}

/// Returns the statements run so far on the probe database `name`, in order.
pub fn statements(name: &str) -> Vec<String> {
    let statements = STATEMENTS.lock().expect("probe lock");
    statements.iter().filter(|(probe, _)| probe == name).map(|(_, statement)| statement.clone()).collect()
}

#[derive(Default)]
struct Probe {
    name: Option<String>,
}

impl Instrumentation for Probe {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        match event {
            InstrumentationEvent::StartEstablishConnection { url, .. } => {
                self.name = url.split("probe-").nth(1).and_then(|rest| rest.split('.').next()).map(str::to_owned);
            }
            InstrumentationEvent::StartQuery { query, .. } => {
                if let Some(name) = &self.name {
                    STATEMENTS.lock().expect("probe lock").push((name.clone(), query.to_string()));
                }
            }
            _ => {}
        }
    }
}
