"""The Oracle (``dojo serve``) through the official ``openai`` client against a real uvicorn server on a loopback
port, serving real checkpoints trained here: list, complete, stream; 401 for a wrong or missing key, 404 for an
unknown step, 400 for a malformed request, 413 for a huge body; ``promoted`` follows a promotion without a
restart; a LoRA adapter checkpoint is served on its base; the checkpoint's own profile applies; concurrent clients
queue. The page: the key is required (basic auth, Bearer or the login cookie), it draws the curves as SVG, and
headless Chromium renders it (a screenshot is kept; ``DOJO_SCREENSHOT=path`` copies it out).

    .venv/bin/python -m pytest -q tests/test_serve.py
"""
from __future__ import annotations

import base64
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest

from dojo import config, promotion
from dojo.generate import generate_file
from dojo.oracle import auth
from model import checkpoint as ckpt
from model.train import train_chunk

KEY = "test-key-0123456789abcdef"
USER = [{"role": "user", "content": "Compute: add(①⓪, ①)"}]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A real uvicorn server for ``app`` on a free loopback port, in a thread."""

    def __init__(self, app):
        import uvicorn

        self.app, self.port = app, free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)


def promote(cfg, path: Path) -> None:
    decision = promotion.Decision(True, path.name, None, "bin", 1, "test promotion")
    promotion.apply(cfg.root, decision, str(path), {"bin": {"1": 0.5}})


@pytest.fixture(scope="module")
def oracle(tmp_path_factory, one_torch_thread):
    """Two checkpoints (steps 1 and 2), the first promoted, and a server over them."""
    from dojo.oracle.app import create_app

    home = tmp_path_factory.mktemp("oracle")
    cfg = config.from_dict({"storage": {"root": str(home / "root")}, "data": {"max_length": 128},
                            "serve": {"max_tokens": 48, "max_resident": 1, "max_body_bytes": 4096}}, env={})
    data = generate_file("bin", 1, 40, 5, home / "bin1.jsonl")
    first = train_chunk(cfg, data, steps=1).checkpoint
    second = train_chunk(cfg, data, steps=1).checkpoint
    promote(cfg, first)
    server = Server(create_app(cfg, KEY))
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)
    yield cfg, server, client, first, second
    server.stop()


def greedy(path: Path, messages, max_new_tokens: int) -> str:
    """What evaluation's greedy generation says for ``messages`` with the checkpoint's recorded system prompt."""
    from model import checkpoint as ckpt
    from model.chat import generation_prompt, with_system_prompt
    from model.evaluate import greedy_generate
    from model.loading import load_model, load_tokenizer, pick_runtime

    tokenizer = load_tokenizer(path)
    prompt = generation_prompt(with_system_prompt(messages, ckpt.read_ledger(path)["system_prompt"]), tokenizer)
    return greedy_generate(load_model(path, pick_runtime(), trainable=False), tokenizer, [prompt], 1,
                           max_new_tokens)[0]


# ---------------------------------------------------------------- the API
def test_health_needs_no_key(oracle):
    _, server, *_ = oracle
    r = httpx.get(server.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_list_models(oracle):
    _, _, client, first, second = oracle
    models = {m.id: m for m in client.models.list()}
    assert {"promoted", "latest", first.name, second.name} <= set(models)
    assert models["promoted"].dojo["resolves_to"] == first.name
    assert models["latest"].dojo["resolves_to"] == second.name
    assert models[second.name].dojo == {"step": 2, "path": str(second)}
    assert client.models.retrieve("step-1").dojo["resolves_to"] == first.name


def test_complete_answers_with_the_checkpoint_and_its_profile(oracle):
    _, _, client, first, _ = oracle
    reply = client.chat.completions.create(model="promoted", messages=USER, temperature=0, max_tokens=12)
    assert reply.model == first.name
    assert reply.dojo["step"] == 1 and reply.dojo["path"] == str(first) and reply.dojo["requested"] == "promoted"
    # the checkpoint's own system prompt is applied: the text is evaluation's greedy output for the same prompt
    assert reply.choices[0].message.content == greedy(first, USER, 12)
    assert reply.dojo["system_prompt"]
    assert reply.usage.completion_tokens <= 12 and reply.choices[0].finish_reason in ("stop", "length")
    bare = client.chat.completions.create(model="promoted", messages=USER, temperature=0, max_tokens=12,
                                          extra_body={"apply_profile": False})
    assert bare.dojo["system_prompt"] is None and bare.usage.prompt_tokens < reply.usage.prompt_tokens


def test_stream_equals_the_plain_completion(oracle):
    _, _, client, _, second = oracle
    plain = client.chat.completions.create(model="step-2", messages=USER, temperature=0, max_tokens=16)
    chunks = list(client.chat.completions.create(model="step-2", messages=USER, temperature=0, max_tokens=16,
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {second.name}
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == plain.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == plain.usage.completion_tokens


def test_seed_stop_and_max_tokens(oracle):
    _, _, client, _, _ = oracle
    ask = dict(model="latest", messages=USER, temperature=1.0, top_p=0.95, seed=7, max_tokens=24)
    a = client.chat.completions.create(**ask).choices[0]
    b = client.chat.completions.create(**ask).choices[0]
    assert a.message.content == b.message.content and len(a.message.content) > 4
    stop = a.message.content[3:5]
    cut = client.chat.completions.create(**ask, stop=[stop]).choices[0]
    assert cut.message.content == a.message.content[:a.message.content.index(stop)]
    assert cut.finish_reason == "stop"
    streamed = client.chat.completions.create(**ask, stop=[stop], stream=True)     # a stop is never half-sent
    assert "".join(c.choices[0].delta.content or "" for c in streamed) == cut.message.content
    short = client.chat.completions.create(**{**ask, "max_tokens": 3})
    assert short.usage.completion_tokens <= 3


def test_chat_template_kwargs_reach_the_template(oracle):
    _, _, client, _, _ = oracle
    off = client.chat.completions.create(model="latest", messages=USER, temperature=0, max_tokens=2)
    on = client.chat.completions.create(model="latest", messages=USER, temperature=0, max_tokens=2,
                                        extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    assert on.usage.prompt_tokens < off.usage.prompt_tokens     # no empty think block in the prompt
    with pytest.raises(openai.BadRequestError, match="tokenize"):
        client.chat.completions.create(model="latest", messages=USER, max_tokens=2,
                                       extra_body={"chat_template_kwargs": {"tokenize": True}})


def test_wrong_or_missing_key_is_401(oracle):
    _, server, _, _, _ = oracle
    wrong = openai.OpenAI(base_url=server.url + "/v1", api_key="not-the-key-at-all", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model="latest", messages=USER)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "latest", "messages": USER})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["www-authenticate"] == "Bearer"


def test_unknown_step_is_404_with_the_available_ids(oracle):
    _, _, client, first, _ = oracle
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="step-999", messages=USER)
    message = err.value.body["message"]
    assert "step-999" in message and "no fallback" in message and first.name in message and "step-1" in message
    assert err.value.body["code"] == "model_not_found"
    for bad in ("checkpoint-3-20260101-0000", "../../etc/passwd", "best"):
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model=bad, messages=USER)


@pytest.mark.parametrize("body, param", [
    ({"model": "latest", "messages": []}, "messages"),
    ({"model": "latest", "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": "latest", "messages": USER, "temperature": 5}, "temperature"),
    ({"model": "latest", "messages": USER, "top_p": 0}, "top_p"),
    ({"model": "latest", "messages": USER, "max_tokens": 10_000}, "max_tokens"),
    ({"model": "latest", "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"model": "latest", "messages": USER, "n": 2}, "n"),
    ({"model": "", "messages": USER}, "model"),
])
def test_malformed_requests_are_400(oracle, body, param):
    _, _, client, _, _ = oracle
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(**body)
    assert err.value.status_code == 400 and err.value.body["param"] == param


def test_bad_bodies_get_error_objects_never_a_traceback(oracle):
    _, server, _, _, _ = oracle
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    for raw, status in ((b"{not json", 400), (b"[1, 2]", 400), (b"[" * 100_000, 413), (b"{}", 400),
                        (b'{"model": "latest", "messages": ' + b"[" * 1000 + b"]" * 1000 + b"}", 400)):
        r = httpx.post(server.url + "/v1/chat/completions", content=raw, headers=headers)
        assert r.status_code == status, raw[:40]
        assert set(r.json()["error"]) == {"message", "type", "param", "code"} and "Traceback" not in r.text
    r = httpx.get(server.url + "/v1/nothing", headers=headers)
    assert r.status_code == 404 and "error" in r.json()


def test_concurrent_clients_queue_and_all_succeed(oracle):
    _, _, client, first, second = oracle

    def ask(i):
        return client.chat.completions.create(model=["step-1", "step-2"][i % 2], messages=USER, temperature=0,
                                              max_tokens=8)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(ask, range(8)))
    # one resident model (serve.max_resident 1): the two checkpoints took turns, every request was answered
    assert [r.model for r in replies] == [first.name, second.name] * 4
    assert len({r.choices[0].message.content for r in replies[0::2]}) == 1


def test_a_client_leaving_mid_stream_frees_the_model(oracle):
    _, server, client, _, _ = oracle
    body = {"model": "step-1", "messages": USER, "stream": True, "max_tokens": 48, "temperature": 1.0, "seed": 3}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and next(r.iter_lines()).startswith("data: {")
    reply = client.with_options(timeout=30).chat.completions.create(model="step-1", messages=USER, max_tokens=2)
    assert reply.choices[0].finish_reason in ("stop", "length")
    deadline = time.monotonic() + 10
    while server.app.state.inflight and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.app.state.inflight == 0


def test_a_full_queue_gets_429(oracle):
    _, server, client, _, _ = oracle
    server.app.state.inflight += 64                 # serve.max_queue (default 64) requests already in the server
    try:
        with pytest.raises(openai.RateLimitError, match="serve.max_queue"):
            client.chat.completions.create(model="latest", messages=USER, max_tokens=2)
    finally:
        server.app.state.inflight -= 64


def test_promoted_switches_after_a_promotion(oracle):
    cfg, _, client, first, second = oracle
    assert client.chat.completions.create(model="promoted", messages=USER, max_tokens=2).model == first.name
    promote(cfg, second)
    reply = client.chat.completions.create(model="promoted", messages=USER, max_tokens=2)
    assert reply.model == second.name and reply.dojo["step"] == 2
    assert {m.id: m for m in client.models.list()}["promoted"].dojo["resolves_to"] == second.name


def test_lora_adapter_is_served_on_its_base(tmp_path, one_torch_thread):
    from dojo.oracle.app import create_app

    cfg = config.from_dict({"storage": {"root": str(tmp_path / "root")}, "data": {"max_length": 128},
                            "model": {"lora": True, "lora_rank": 4, "lora_alpha": 8}}, env={})
    adapter = train_chunk(cfg, generate_file("bin", 1, 20, 3, tmp_path / "b.jsonl"), steps=1).checkpoint
    assert (adapter / "adapter_config.json").is_file()
    server = Server(create_app(cfg, KEY))
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)
        reply = client.chat.completions.create(model="latest", messages=USER, temperature=0, max_tokens=6)
    finally:
        server.stop()
    assert reply.model == adapter.name and reply.dojo["base"] == str(cfg.model.name_or_path)
    assert reply.choices[0].message.content == greedy(adapter, USER, 6)


# ---------------------------------------------------------------- the key
def test_key_file_is_created_0600_once(tmp_path):
    key = auth.ensure_key(tmp_path, env={})
    path = tmp_path / "state" / "serve.key"
    assert key.created and path.stat().st_mode & 0o777 == 0o600 and key.source == str(path)
    again = auth.ensure_key(tmp_path, env={})
    assert not again.created and again.value == key.value
    assert auth.ensure_key(tmp_path, env={"DOJO_API_KEY": "x" * 20}).value == "x" * 20
    path.chmod(0o644)
    with pytest.raises(ValueError, match="chmod 600"):
        auth.find_key(tmp_path, env={})
    with pytest.raises(ValueError, match="16-4096 printable"):
        auth.find_key(tmp_path, env={"DOJO_API_KEY": "short"})


def test_beyond_loopback_needs_an_existing_key(tmp_path):
    assert auth.is_loopback("127.0.0.1") and auth.is_loopback("localhost") and auth.is_loopback("::1")
    assert not auth.is_loopback("0.0.0.0")
    with pytest.raises(ValueError, match="refusing to bind 0.0.0.0"):
        auth.server_key(tmp_path, "0.0.0.0", env={})
    assert not (tmp_path / "state" / "serve.key").exists()
    assert auth.server_key(tmp_path, "0.0.0.0", env={"DOJO_API_KEY": "k" * 32}).value == "k" * 32
    assert auth.server_key(tmp_path, "127.0.0.1", env={}).created


def test_serve_refuses_a_public_bind_without_a_key(tmp_path, capsys, monkeypatch):
    from dojo.cli import main

    monkeypatch.delenv("DOJO_API_KEY", raising=False)
    assert main(["serve", "--host", "0.0.0.0", "--port", str(free_port())]) == 2
    assert "refusing to bind 0.0.0.0" in capsys.readouterr().err


# ---------------------------------------------------------------- the page
def test_page_needs_the_key_and_draws_svg(oracle):
    from dojo.storage import write_json
    from skills import curriculum

    cfg, server, _, first, second = oracle
    state = curriculum.new_state(["bin"])                      # BIN level 1 mastered by the eval of step 2
    state["skills"]["bin"].update(level=1, advanced_at=[1], history=[
        {"level": 1, "accuracy": 0.9, "checkpoint": second.name, "step": 2, "time": "2026-12-02T00:00:00+00:00"}])
    write_json(cfg.root / "state" / "curriculum.json", state)
    for path, accuracy in ((first, 0.5), (second, 0.9)):            # as evaluation records it in the ledger
        ckpt.update_ledger(path, eval={"bin": {"1": accuracy}})
    r = httpx.get(server.url + "/")
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Basic")
    assert '<form method="post" action="/login">' in r.text
    assert httpx.get(server.url + "/", auth=("anyone", "wrong-key-wrong-key")).status_code == 401
    r = httpx.get(server.url + "/", auth=("anyone", KEY))
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    page = r.text
    assert page.count("<svg") == 2 and "Loss by step" in page and "<script" not in page.lower()
    assert "<polyline" in page and first.name in page and second.name in page and "queue depth" in page
    assert "promoted checkpoint" in page
    # marked on both charts: the promotion of step 1 and the level advance at step 2
    assert page.count(f"<title>promoted {first.name}</title>") == 2
    assert page.count("<title>bin level 1 mastered</title>") == 2
    assert "<title>bin L1 at step 2: 0.9</title>" in page
    assert httpx.post(server.url + "/login", data={"key": "nope"}).status_code == 401
    login = httpx.post(server.url + "/login", data={"key": KEY})
    assert login.status_code == 303
    cookie = login.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and KEY not in cookie
    assert httpx.get(server.url + "/", cookies=login.cookies).status_code == 200


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_page_renders_in_headless_chromium(oracle, tmp_path):
    _, server, *_ = oracle
    shot = tmp_path / "oracle.png"
    url = f"http://oracle:{KEY}@127.0.0.1:{server.port}/"      # basic auth: any user, the key as password
    done = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1100,900",
                           f"--screenshot={shot}", url], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000      # a drawn page, not a blank or 401 page
    if os.environ.get("DOJO_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["DOJO_SCREENSHOT"])


def test_basic_password_parsing():
    assert auth.basic_password("Basic " + base64.b64encode(b"u:p:q").decode()) == "p:q"
    assert auth.basic_password("Basic !!!") is None and auth.basic_password(None) is None
    assert auth.bearer("Bearer  abc ") == "abc" and auth.bearer("Basic abc") is None


# ---------------------------------------------------------------- in the stack
def test_stack_starts_and_stops_the_oracle(tmp_path, monkeypatch):
    """What ``dojo up`` does with ``serve.enabled: true`` (without the Prefect server, which test_stack.py covers):
    the Oracle runs as this home's ``oracle`` process, ``dojo status`` prints its URL, ``dojo down`` stops it."""
    import yaml

    from deployments import stack

    monkeypatch.delenv("DOJO_API_KEY", raising=False)
    cfg_path = tmp_path / "dojo.yaml"
    cfg_path.write_text(yaml.safe_dump({"storage": {"root": str(tmp_path / "root")},
                                        "serve": {"enabled": True, "port": free_port()}}))
    monkeypatch.delenv("DOJO_HOME")
    cfg = config.load(str(cfg_path))
    data, lines = stack._load(cfg), []
    stack._claim(cfg, data)
    url = stack.start_oracle(cfg, stack.stack_env(cfg, str(cfg_path)), data, log=lines.append)
    try:
        key = (cfg.root / "state" / "serve.key").read_text().strip()
        assert sum(key in line for line in lines) == 1                       # printed once, by dojo up itself
        assert httpx.get(url + "health").status_code == 200
        assert httpx.get(url + "v1/models", headers={"Authorization": f"Bearer {key}"}).json()["data"] == []
        status = []
        assert stack.status(cfg, log=status.append)["oracle"] == url
        assert any(line.startswith(f"oracle: {url} (answering") for line in status)
        assert not any(key in line for line in status)
    finally:
        stopped = stack.down(cfg, log=lambda *_: None)
    assert any("oracle" in s for s in stopped)
    with pytest.raises(httpx.TransportError):
        httpx.get(url + "health", timeout=2)


def test_sampling_helpers():
    import torch

    from model.sampling import held_back, pick_token

    logits = torch.tensor([0.0, 3.0, 2.9, -1.0])
    generator = torch.Generator().manual_seed(0)
    assert pick_token(logits, 0.0, 1.0, None) == 1
    assert {pick_token(logits, 1.0, 0.01, generator) for _ in range(50)} == {1}      # top_p keeps the top token
    assert {pick_token(logits, 1.0, 0.9, generator) for _ in range(200)} == {1, 2}   # the tail is cut
    assert held_back("the end", ("end.", "xyz")) == 3 and held_back("abc", ("xyz",)) == 0
