//! MLServer (from PyPI, installed in .venv by tests/run.sh) serving a small trained power
//! model, for the tests that need a real V2 inference predictor.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{eventually, free_port, TempDir};

/// A child process, killed on drop.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Trains a small regression, serves it with MLServer, and returns (server, port, the
/// model's own predictions for `queries`).
pub fn mlserver(dir: &TempDir, queries: &[[f64; 3]]) -> (Server, u16, Vec<f64>) {
    let port = free_port();
    let script = format!(
        r#"
import json, sys, numpy as np, joblib
from sklearn.linear_model import LinearRegression
rng = np.random.default_rng(7)
X = rng.uniform([0, 15, 0], [100, 35, 20], size=(300, 3))
y = 55 + 1.7 * X[:, 0] + 0.9 * np.maximum(X[:, 1] - 24, 0) + 0.05 * X[:, 2]
m = LinearRegression().fit(X, y)
import os
os.makedirs("power", exist_ok=True)
joblib.dump(m, "power/model.joblib")
json.dump({{"name": "power", "implementation": "mlserver_sklearn.SKLearnModel",
           "parameters": {{"uri": "./model.joblib", "version": "v1"}}}}, open("power/model-settings.json", "w"))
json.dump({{"http_port": {port}, "grpc_port": {g}, "metrics_port": {mp}, "parallel_workers": 0, "host": "127.0.0.1"}},
          open("settings.json", "w"))
q = np.array({queries:?}, dtype=np.float32)
print(json.dumps([float(v) for v in m.predict(q)]))
"#,
        g = free_port(),
        mp = free_port(),
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .current_dir(&dir.0)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "training failed (is tests/requirements.txt installed?): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected: Vec<f64> = serde_json::from_slice(&out.stdout).expect("predictions");
    let child = Command::new("mlserver")
        .args(["start", "."])
        .current_dir(&dir.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("mlserver is installed (tests/run.sh installs it in .venv)");
    (Server(child), port, expected)
}

/// Waits until the MLServer on `port` answers ready.
pub async fn mlserver_ready(port: u16) -> bool {
    eventually(Duration::from_secs(60), async || {
        reqwest::get(format!("http://127.0.0.1:{port}/v2/health/ready"))
            .await
            .is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// The row's watts and ΔW are exactly the model's predictions for the two queries (now, and
/// with one more connection), and it says which model gave them.
pub fn assert_model_answers(row: &wao_lb::telemetry::weights_view::WeightRow, expected: &[f64]) {
    let watts = row.watts.expect("watts");
    let delta = row.delta_watts.expect("ΔW");
    assert!(
        (watts - expected[0]).abs() < 1e-6,
        "wao-lb {watts} vs the model's {}",
        expected[0]
    );
    assert!(
        (delta - (expected[1] - expected[0])).abs() < 1e-6,
        "ΔW {delta} vs {}",
        expected[1] - expected[0]
    );
    assert!(row.reason.contains("v2-inference"), "{}", row.reason);
}
