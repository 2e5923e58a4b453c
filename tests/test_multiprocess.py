"""Multi-process runs: who joins a run, batches split over devices, and 2 processes x 2
CPU devices (data parallel) and 2 processes x 1 device (the priors split over the
processes) training exactly like 1 process x 4 devices (2 data x 2 prior).

The multi-process runs start real processes on this machine: JAX's distributed runtime
with the coordinator on a free loopback port and gloo CPU collectives, configured through
the environment as the launch scripts do (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
JAX_PROCESS_ID). Every process is bounded by a deadline and killed on failure.
"""
import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np
from absl.testing import absltest

import multiprocess_worker
import tiny
from audiosep_jax import distributed
from audiosep_jax import priors
from audiosep_jax import train
from audiosep_jax.data import pipeline
from configs import toy_flow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEADLINE_S = 480
NUM_STEPS = 3
# Adam divides by sqrt(v) + eps: with the default eps = 1e-8, a gradient component that
# is zero up to roundoff moves its parameter by +-lr depending on the sign of that
# roundoff, and the order of the cross-device sum differs between gloo (2 processes) and
# in-process collectives (1 process). eps = 1e-3 keeps each update a smooth function of
# the gradient, so the comparison below sees float32 roundoff (measured: 8e-7), not signs.
TRAIN_OVERRIDES = {
    **tiny.FLOW_OVERRIDES,
    "training.num_steps": NUM_STEPS,
    "training.log_every": NUM_STEPS,
    "training.eval_every": NUM_STEPS,
    "training.checkpoint_every": NUM_STEPS,
    "training.batch_size": 4,
    # Three examples per eval batch: padded to four, one per device.
    "training.eval_batch_size": 3,
    "training.num_audio_samples": 0,
    "optim.eps": 1e-3,
}
PARAMS_ATOL = 1e-5
# Variables of a launcher that must not leak into the test's processes.
LAUNCH_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                    "JAX_LOCAL_DEVICE_IDS", "JAX_NUM_CPU_DEVICES", "XLA_FLAGS",
                    distributed.MODE_VARIABLE)


def train_config():
  config = toy_flow.get_config("test")
  config.update_from_flattened_dict(TRAIN_OVERRIDES)
  return config


def process_env(num_devices, coordinator=None, num_processes=1, process_id=0):
  env = {k: v for k, v in os.environ.items()
         if k not in LAUNCH_VARIABLES and not k.startswith("SLURM_")}
  env.update(JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(num_devices),
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  if num_processes > 1:
    env.update(JAX_COORDINATOR_ADDRESS=coordinator, JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
  return env


class Runs:
  """Started processes with their log files; `wait` kills them all on a missed deadline."""

  def __init__(self, log_dir):
    self.log_dir = log_dir
    self.procs = {}

  def start(self, name, command, env):
    log = open(os.path.join(self.log_dir, f"{name}.log"), "w")
    self.procs[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                         stderr=subprocess.STDOUT), log)

  def log(self, name):
    with open(os.path.join(self.log_dir, f"{name}.log")) as f:
      return f.read()

  def kill(self):
    for proc, log in self.procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
      log.close()

  def wait(self, deadline):
    try:
      for name, (proc, _) in self.procs.items():
        try:
          proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
          raise AssertionError(f"{name} ran past {DEADLINE_S} s:\n{self.log(name)[-3000:]}")
    finally:
      self.kill()
    failed = [n for n, (p, _) in self.procs.items() if p.returncode != 0]
    if failed:
      raise AssertionError("\n".join(f"{n} exited {self.procs[n][0].returncode}:\n"
                                     f"{self.log(n)[-3000:]}" for n in failed))


def scalars(workdir):
  path = os.path.join(workdir, "tb", "flow", "sigma_0", "scalars.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f]


class ResolveTest(absltest.TestCase):

  def test_no_variables_is_one_process(self):
    self.assertEqual(distributed.resolve(environ={}).source, "single")

  def test_jax_variables(self):
    cluster = distributed.resolve(environ={"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234",
                                           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3"})
    self.assertEqual(cluster, distributed.Cluster("explicit", "10.0.0.1:1234", 4, 3))

  def test_arguments_win_over_variables(self):
    cluster = distributed.resolve("127.0.0.1:5", 2, 0, environ={
        "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "4",
        "JAX_PROCESS_ID": "3"})
    self.assertEqual(cluster, distributed.Cluster("explicit", "127.0.0.1:5", 2, 0))

  def test_one_process_needs_no_coordinator(self):
    cluster = distributed.resolve(environ={"JAX_NUM_PROCESSES": "1", "JAX_PROCESS_ID": "0"})
    self.assertEqual(cluster.source, "single")

  def test_bad_variables_are_named(self):
    bad = [({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0"}, "JAX_COORDINATOR_ADDRESS"),
           ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "2",
             "JAX_COORDINATOR_ADDRESS": "h:1"}, "JAX_PROCESS_ID=2"),
           ({"JAX_NUM_PROCESSES": "two", "JAX_PROCESS_ID": "0"}, "JAX_NUM_PROCESSES='two'"),
           ({"JAX_PROCESS_ID": "1"}, "JAX_NUM_PROCESSES=None"),
           ({"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "0",
             "JAX_COORDINATOR_ADDRESS": "nohostport"}, "host:port"),
           ({distributed.MODE_VARIABLE: "yes"}, distributed.MODE_VARIABLE),
           ({"SLURM_STEP_NUM_TASKS": "2"}, "SLURM_PROCID"),
           ({"SLURM_STEP_NUM_TASKS": "2", "SLURM_PROCID": "x",
             "JAX_COORDINATOR_ADDRESS": "h:1"}, "SLURM_PROCID='x'")]
    for environ, message in bad:
      with self.subTest(environ=environ):
        with self.assertRaisesRegex(ValueError, message):
          distributed.resolve(environ=environ)

  def test_slurm_step(self):
    environ = {"SLURM_STEP_NUM_TASKS": "8", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
               "JAX_COORDINATOR_ADDRESS": "node001:61234"}
    self.assertEqual(distributed.resolve(environ=environ),
                     distributed.Cluster("slurm", "node001:61234", 8, 5))
    del environ["JAX_COORDINATOR_ADDRESS"]
    with self.assertRaisesRegex(ValueError, "SLURM step of 8 tasks needs JAX_COORDINATOR"):
      distributed.resolve(environ=environ)
    # AUDIOSEP_DISTRIBUTED=auto leaves it all to JAX's own SLURM detection.
    environ[distributed.MODE_VARIABLE] = "auto"
    self.assertEqual(distributed.resolve(environ=environ), distributed.Cluster("auto"))

  def test_slurm_single_task_and_off(self):
    self.assertEqual(distributed.resolve(environ={"SLURM_STEP_NUM_TASKS": "1",
                                                  "SLURM_PROCID": "0"}).source, "single")
    off = {distributed.MODE_VARIABLE: "off", "SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "1",
           "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "1"}
    self.assertEqual(distributed.resolve(environ=off).source, "single")

  def test_auto(self):
    self.assertEqual(distributed.resolve(environ={distributed.MODE_VARIABLE: "auto"}),
                     distributed.Cluster("auto"))

  def test_initialize_one_process_is_a_no_op(self):
    self.assertEqual(distributed.initialize(environ={}).source, "single")
    self.assertFalse(jax.distributed.is_initialized())
    self.assertTrue(distributed.is_primary())


class RowsTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    self.mesh = train.make_mesh()

  def test_pad_rows_repeats_the_last_row(self):
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    padded, count = distributed.pad_rows(x, 4)
    self.assertEqual(count, 3)
    np.testing.assert_array_equal(padded, [[0, 1], [2, 3], [4, 5], [4, 5]])
    same, _ = distributed.pad_rows(x, 3)
    np.testing.assert_array_equal(same, x)
    with self.assertRaisesRegex(ValueError, "rows"):
      distributed.pad_rows(np.zeros((0, 2)), 4)

  def test_map_rows_equals_the_unsplit_function(self):
    key = jax.random.key(multiprocess_worker.SEED)
    x = multiprocess_worker.inputs()
    apply = distributed.map_rows(multiprocess_worker.row_fn, self.mesh,
                                 out_axes=multiprocess_worker.OUT_AXES)
    rows, trace = apply(key, np.float32(multiprocess_worker.SCALE), x)
    want_rows, want_trace = multiprocess_worker.row_fn(key, multiprocess_worker.SCALE, x)
    np.testing.assert_allclose(rows, want_rows, rtol=1e-6)
    np.testing.assert_allclose(trace["total"], want_trace["total"], rtol=1e-6)
    np.testing.assert_array_equal(trace["level"], [0, 1])

  def test_map_rows_bad_arguments(self):
    apply = distributed.map_rows(lambda a, b: a + b, self.mesh, num_batched=2)
    with self.assertRaisesRegex(ValueError, "one leading size"):
      apply(np.zeros((3, 2)), np.zeros((4, 2)))
    scalar = distributed.map_rows(lambda x: x.sum(), self.mesh)
    with self.assertRaisesRegex(ValueError, "set out_axes"):
      scalar(np.zeros((3, 2)))

  def test_mesh_needs_a_device_count_it_can_split(self):
    with self.assertRaisesRegex(ValueError, "num_devices=99"):
      train.make_mesh(99)

  def test_prior_devices_must_divide_the_sources_and_the_devices(self):
    config = train_config()
    config.training.prior_devices = 3
    with self.assertRaisesRegex(ValueError, "prior_devices=3 must divide the 4 sources"):
      train.make_train_mesh(config)
    config.training.prior_devices = 2
    with self.assertRaisesRegex(ValueError, "prior_devices=2 must divide the 1 devices each "
                                "process uses, or be a multiple of them that divides all 1"):
      train.make_train_mesh(config)


class CpuProcessesLauncherTest(absltest.TestCase):
  """launch/cpu_processes.sh refuses a process count it cannot pin, before any set-up."""

  def launch(self, processes):
    env = dict(os.environ, PROCESSES=str(processes))
    return subprocess.run(["bash", os.path.join(ROOT, "launch", "cpu_processes.sh"),
                           "--config=configs/toy_flow.py:test"], env=env,
                          capture_output=True, text=True, timeout=60)

  def test_bad_process_counts_are_named(self):
    cores = len(os.sched_getaffinity(0))
    for processes, message in ((0, "PROCESSES=0 is not a positive integer"),
                               ("two", "PROCESSES=two is not a positive integer"),
                               (cores + 1, f"PROCESSES={cores + 1}, but this shell may use "
                                           f"only {cores} cores")):
      with self.subTest(processes=processes):
        result = self.launch(processes)
        self.assertEqual(result.returncode, 2, result.stderr)
        self.assertIn(message, result.stderr)
        self.assertNotIn("Installing", result.stdout)


class MultiProcessTest(absltest.TestCase):
  """2 processes x 2 devices, data parallel ('two'), and 2 processes x 1 device with the
  `prior` axis over both processes, two priors each ('prior_processes'), against 1
  process x 4 devices on a 2 x 2 ('data', 'prior') mesh ('one'), all started at once."""
  MULTI_PROCESS_RUNS = ("two", "prior_processes")

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    cls.tmp = tempfile.TemporaryDirectory()
    cls.dirs = {name: os.path.join(cls.tmp.name, name)
                for name in (*cls.MULTI_PROCESS_RUNS, "one")}
    runs = Runs(cls.tmp.name)
    train_command = [sys.executable, "-m", "audiosep_jax.main",
                     "--config=configs/toy_flow.py:test", "--mode=train"]
    train_command += [f"--config.{field}={value}" for field, value in TRAIN_OVERRIDES.items()]
    rows_command = [sys.executable, os.path.join(ROOT, "tests", "multiprocess_worker.py")]
    train_address = f"127.0.0.1:{distributed.free_local_port()}"
    prior_address = f"127.0.0.1:{distributed.free_local_port()}"
    rows_address = f"127.0.0.1:{distributed.free_local_port()}"
    cls.rows_out = {name: os.path.join(cls.tmp.name, f"rows_{name}") for name in ("two", "one")}
    try:
      for i in range(2):
        runs.start(f"train_two_{i}", train_command + [f"--workdir={cls.dirs['two']}"],
                   process_env(2, train_address, 2, i))
        runs.start(f"rows_two_{i}", rows_command + [cls.rows_out["two"]],
                   process_env(2, rows_address, 2, i))
        runs.start(f"train_prior_processes_{i}",
                   train_command + [f"--workdir={cls.dirs['prior_processes']}",
                                    "--config.training.prior_devices=2"],
                   process_env(1, prior_address, 2, i))
      runs.start("train_one", train_command + [f"--workdir={cls.dirs['one']}",
                                               "--config.training.prior_devices=2"],
                 process_env(4))
      runs.start("rows_one", rows_command + [cls.rows_out["one"]], process_env(4))
    except BaseException:
      runs.kill()
      raise
    runs.wait(time.monotonic() + DEADLINE_S)
    cls.logs = {name: runs.log(name) for name in runs.procs}

  @classmethod
  def tearDownClass(cls):
    cls.tmp.cleanup()
    super().tearDownClass()

  def test_params_equal_one_process(self):
    config = train_config()
    one = train.load_params(config, self.dirs["one"], 0.0)
    for name in self.MULTI_PROCESS_RUNS:
      multi = train.load_params(config, self.dirs[name], 0.0)
      diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(a - b))), multi, one)
      self.assertLess(max(jax.tree.leaves(diffs)), PARAMS_ATOL, msg=name)
    for workdir in self.dirs.values():
      self.assertEqual(os.listdir(train.checkpoint_dir(workdir, "flow", 0.0)), [str(NUM_STEPS)])

  def test_training_and_eval_metrics_match(self):
    one = scalars(self.dirs["one"])
    for run in self.MULTI_PROCESS_RUNS:
      multi = scalars(self.dirs[run])
      # One record per write: process 1 wrote nothing.
      self.assertEqual([r["step"] for r in multi], [r["step"] for r in one])
      self.assertEqual([sorted(r) for r in multi], [sorted(r) for r in one])
      for a, b in zip(multi, one):
        for name in a:
          if name != "steps_per_sec":
            self.assertAlmostEqual(a[name], b[name], delta=1e-5, msg=f"{run}: {name}")
      test_ll = {k: v for r in multi for k, v in r.items() if k.startswith("test_nats")}
      self.assertLen(test_ll, 4)

  def test_sharded_eval_equals_one_device(self):
    config = train_config()
    params = train.load_params(config, self.dirs["two"], 0.0)
    eval_fn = train.make_eval_fn(priors.build(config.model), train.make_mesh())
    want = train.evaluate(eval_fn, params, pipeline.test_set(config),
                          config.training.eval_batch_size)
    logged = {k.split("/")[1]: v for r in scalars(self.dirs["two"]) for k, v in r.items()
              if k.startswith("test_nats")}
    got = [logged[n] for n in config.data.source_names]
    np.testing.assert_allclose(got, want, atol=1e-5)

  def test_only_process_zero_logs(self):
    self.assertIn(f"step {NUM_STEPS}/{NUM_STEPS}", self.logs["train_two_0"])
    self.assertNotIn(f"step {NUM_STEPS}/{NUM_STEPS}", self.logs["train_two_1"])
    self.assertIn("Joined a run of 2 processes as process 0", self.logs["train_two_0"])
    self.assertTrue(os.path.isfile(os.path.join(self.dirs["two"], "configs", "flow.json")))

  def test_rows_split_over_processes(self):
    x = multiprocess_worker.inputs()
    key = jax.random.key(multiprocess_worker.SEED)
    want_rows, want_trace = multiprocess_worker.row_fn(key, multiprocess_worker.SCALE, x)
    local = []
    for name, num_processes in (("two", 2), ("one", 1)):
      for index in range(num_processes):
        out = np.load(f"{self.rows_out[name]}.{index}.npz")
        self.assertEqual(int(out["process_count"]), num_processes)
        self.assertEqual(int(out["device_count"]), 4)
        self.assertEqual(int(out["padded"]), 8)
        self.assertEqual(str(out["source"]), "explicit" if num_processes > 1 else "single")
        np.testing.assert_array_equal(out["mesh_processes"],
                                      np.repeat(np.arange(num_processes), 4 // num_processes))
        np.testing.assert_allclose(out["rows"], want_rows, rtol=1e-6)
        np.testing.assert_allclose(out["total"], want_trace["total"], rtol=1e-6)
        np.testing.assert_array_equal(out["level"], [0, 1])
        np.testing.assert_array_equal(out["prior_mesh_shape"], [1, 4])
        np.testing.assert_array_equal(out["gathered"], multiprocess_worker.train_batch())
        if name == "two":
          local.append((out["local_rows"].tolist(), out["local_sources"].tolist()))
    # Each process holds one contiguous block of the padded rows, and on a `prior` axis
    # over both processes, the sources of its own devices.
    self.assertEqual(local, [([0, 1, 2, 3], [0, 1]), ([4, 5, 6, 7], [2, 3])])


if __name__ == "__main__":
  absltest.main()
