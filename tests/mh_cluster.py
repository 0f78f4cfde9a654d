"""Starts, drives and tears down loopback clusters of real processes for the
distributed tests. Every wait is bounded, every task runs in its own process
group (killed whole), and every port is a free one on 127.0.0.1.
"""

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_SCRIPT = os.path.join(ROOT, "tests", "ps_cluster_task.py")


def free_port():
  """A port on 127.0.0.1 that nothing listens on right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def wait_listening(host, timeout=120):
  """Waits until something accepts connections on host:port, so that
  workers never start before the ps tasks serve (the runtime retries a
  missing task only every several seconds)."""
  addr, port = host.rsplit(":", 1)
  deadline = time.time() + timeout
  while True:
    try:
      with socket.create_connection((addr, int(port)), timeout=1):
        return
    except OSError:
      if time.time() > deadline:
        raise TimeoutError("nothing listens on %s after %gs" % (host, timeout))
      time.sleep(0.1)


def child_env():
  """The environment of a task: the repository importable, no GPU, quiet."""
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES="")
  env["PYTHONPATH"] = os.pathsep.join(
      [ROOT, os.path.join(ROOT, "tests")]
      + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
  )
  return env


class Task(object):
  """One process of the cluster. Workers talk JSON lines (see
  ps_cluster_task.py); their stderr, and everything of a ps task, goes to a
  log file that failures quote."""

  def __init__(self, job, index, argv, log_dir):
    self.job, self.index = job, index
    self.log_path = os.path.join(
        log_dir, "%s%d-%d.log" % (job, index, time.time_ns())
    )
    self._log = open(self.log_path, "w")
    self._lines = queue.Queue()
    self.proc = subprocess.Popen(
        [
            sys.executable,
            TASK_SCRIPT,
            "--job_name=" + job,
            "--task_index=%d" % index,
        ]
        + argv,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=self._log,
        text=True,
        bufsize=1,
        env=child_env(),
        cwd=ROOT,
        start_new_session=True,
    )
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      if line.startswith("{") or line.startswith("null"):
        self._lines.put(json.loads(line))
    self._lines.put(EOFError("task exited"))

  def log_tail(self, n=3000):
    self._log.flush()
    with open(self.log_path) as f:
      return f.read()[-n:]

  def next(self, timeout):
    """The next JSON line, waiting at most `timeout` seconds."""
    try:
      item = self._lines.get(timeout=timeout)
    except queue.Empty:
      raise TimeoutError(
          "%s%d: no answer in %gs; log:\n%s"
          % (self.job, self.index, timeout, self.log_tail())
      )
    if isinstance(item, EOFError):
      raise RuntimeError(
          "%s%d exited (%s); log:\n%s"
          % (self.job, self.index, self.proc.poll(), self.log_tail())
      )
    return item

  def reply(self, timeout=120):
    """The next line that is not a progress report."""
    deadline = time.time() + timeout
    while True:
      item = self.next(max(0.1, deadline - time.time()))
      if not (isinstance(item, dict) and "progress" in item):
        return item

  def ask(self, cmd, timeout=120):
    """Sends a command and returns its reply; a reported error raises."""
    self.send(cmd)
    out = self.reply(timeout)
    if isinstance(out, dict) and "error" in out:
      raise RuntimeError("%s%d: %s" % (self.job, self.index, out["error"]))
    return out

  def send(self, cmd):
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()

  def wait_ready(self, timeout=180):
    out = self.reply(timeout)
    assert out.get("event") == "ready", out
    return out

  def kill(self):
    """SIGKILL to the whole process group; waits (bounded) for the exit."""
    if self.proc.poll() is None:
      try:
        os.killpg(self.proc.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    self.proc.wait(timeout=30)
    self._log.close()

  def quit(self, timeout=60):
    """Asks a worker to close its session; kills it if that takes long."""
    try:
      self.send({"cmd": "quit"})
      self.proc.wait(timeout=timeout)
    except (OSError, subprocess.TimeoutExpired):
      pass
    self.kill()


class Cluster(object):
  """2 ps tasks and 2 workers on 127.0.0.1, running ps_cluster_task.py with
  the example's options `options`."""

  def __init__(self, log_dir, options, num_ps=2, num_workers=2):
    self.ps_hosts = ["127.0.0.1:%d" % free_port() for _ in range(num_ps)]
    self.worker_hosts = [
        "127.0.0.1:%d" % free_port() for _ in range(num_workers)
    ]
    self.argv = [
        "--ps_hosts=" + ",".join(self.ps_hosts),
        "--worker_hosts=" + ",".join(self.worker_hosts),
    ] + options
    self.log_dir = log_dir
    self.ps, self.workers = [], []
    try:
      self.ps = [self.start("ps", i) for i in range(num_ps)]
      for host in self.ps_hosts:
        wait_listening(host)
      # The chief first: a worker that finds the model not yet
      # initialized looks again only 30 s later.
      self.ready = []
      for i in range(num_workers):
        self.workers.append(self.start("worker", i))
        self.ready.append(self.workers[-1].wait_ready())
    except BaseException:
      self.close()
      raise

  def start(self, job, index):
    return Task(job, index, self.argv, self.log_dir)

  def restart(self, job, index):
    """Kills task `index` of `job` (if alive) and starts it again on the
    same port; returns the new task (a worker is not yet ready)."""
    tasks = self.ps if job == "ps" else self.workers
    tasks[index].kill()
    tasks[index] = self.start(job, index)
    if job == "ps":
      wait_listening(self.ps_hosts[index])
    return tasks[index]

  def close(self):
    for w in self.workers:
      w.quit(timeout=30)
    for p in self.ps:
      p.kill()


MULTIWORKER_SCRIPT = os.path.join(ROOT, "tests", "multiworker_task.py")


class Workers(object):
  """`num_workers` processes of tests/multiworker_task.py forming one
  MultiWorkerMirroredStrategy cluster (TF_CONFIG, free loopback ports).
  Each runs in its own process group; stdout is read as JSON lines,
  stderr goes to a log that failures quote. Use as a context manager:
  every process is killed on exit, failure or not."""

  def __init__(self, argv, log_dir, num_workers=2, extra_argv=None):
    self.hosts = ["127.0.0.1:%d" % free_port() for _ in range(num_workers)]
    self.procs, self.logs, self.lines = [], [], []
    try:
      for i in range(num_workers):
        env = child_env()
        env["TF_CONFIG"] = json.dumps(
            {
                "cluster": {"worker": self.hosts},
                "task": {"type": "worker", "index": i},
            }
        )
        log = open(
            os.path.join(log_dir, "mw%d-%d.log" % (i, time.time_ns())), "w"
        )
        self.logs.append(log)
        self.lines.append(queue.Queue())
        p = subprocess.Popen(
            [sys.executable, MULTIWORKER_SCRIPT]
            + list(argv)
            + list((extra_argv or {}).get(i, [])),
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            bufsize=1,
            env=env,
            cwd=ROOT,
            start_new_session=True,
        )
        self.procs.append(p)
        threading.Thread(target=self._read, args=(i,), daemon=True).start()
    except BaseException:
      self.close()
      raise

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def _read(self, i):
    for line in self.procs[i].stdout:
      if line.startswith("{"):
        self.lines[i].put(json.loads(line))
    self.lines[i].put(EOFError("worker exited"))

  def log_tail(self, i, n=3000):
    self.logs[i].flush()
    with open(self.logs[i].name) as f:
      return f.read()[-n:]

  def wait_for(self, i, key, timeout):
    """The first JSON line of worker i that has `key`."""
    deadline = time.time() + timeout
    while True:
      try:
        item = self.lines[i].get(timeout=max(0.1, deadline - time.time()))
      except queue.Empty:
        raise TimeoutError(
            "worker %d: no %r in %gs; log:\n%s"
            % (i, key, timeout, self.log_tail(i))
        )
      if isinstance(item, EOFError):
        raise RuntimeError(
            "worker %d exited (%s) before %r; log:\n%s"
            % (i, self.procs[i].wait(timeout=30), key, self.log_tail(i))
        )
      if key in item:
        return item

  def wait(self, timeout):
    """Waits (bounded) until every worker reported done and exited 0."""
    deadline = time.time() + timeout
    for i, p in enumerate(self.procs):
      self.wait_for(i, "done", max(1, deadline - time.time()))
      rc = p.wait(timeout=max(1, deadline - time.time()))
      if rc != 0:
        raise RuntimeError(
            "worker %d exited %d; log:\n%s" % (i, rc, self.log_tail(i))
        )

  def kill(self, i):
    """SIGKILL to worker i's process group; waits for the exit."""
    p = self.procs[i]
    if p.poll() is None:
      try:
        os.killpg(p.pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    p.wait(timeout=30)

  def close(self):
    for i in range(len(self.procs)):
      self.kill(i)
    for log in self.logs:
      log.close()
