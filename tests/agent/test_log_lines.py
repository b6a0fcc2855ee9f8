"""The line an operator reads first about a failed replica: the first that names an error, its timestamp cut."""

from __future__ import annotations

from fleetd.agent.log_lines import first_error_line, without_prefix


def test_llama_cpp_s_time_and_level_are_cut_and_the_error_line_wins() -> None:
    tail = [
        "0.00.012.345 I build: 11434 (abc) with cc for x86_64-linux-gnu",
        "0.00.120.001 E llama_model_load: error loading model: tensor 'blk.0' data is not within the file bounds",
        "0.00.120.050 E llama_model_load_from_file_impl: failed to load model",
        "0.00.130.000 I main: exiting due to model loading error",
    ]
    assert first_error_line(tail) == (
        "llama_model_load: error loading model: tensor 'blk.0' data is not within the file bounds"
    )


def test_dates_and_levels_are_cut_and_without_an_error_the_last_line_is_used() -> None:
    assert without_prefix("[2026-12-03 17:00:00,123] ERROR: CUDA out of memory") == "CUDA out of memory"
    assert without_prefix("2026-12-03T17:00:00Z INFO server listening") == "server listening"
    assert first_error_line(["starting", "", "listening on 127.0.0.1:18000"]) == "listening on 127.0.0.1:18000"
    assert first_error_line(["", "   "]) is None
    assert len(first_error_line(["error: " + "x" * 1000]) or "") == 300
