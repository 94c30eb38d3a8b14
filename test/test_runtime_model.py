"""Runtime model loading: specific errors, family consistency, providers, IO binding, no torch."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

from energyflow_ros.runtime import (
    JointMismatchError, load_model, ModelMetadataError, ModelNotFoundError, ModelVersionError,
    NotAnOnnxModelError, ProviderConfig, ProviderConfigError, read_metadata,
)
from energyflow_ros.runtime.model_format import graph_path, METADATA_KEY
from energyflow_ros.runtime.providers import BoundRunner, provider_chain
from test.export_fixtures import export_tiny, JOINTS


@pytest.fixture(scope='module')
def family(tmp_path_factory):
    """Tiny exported energyflow and rnce families (exported once for the module)."""
    folder = str(tmp_path_factory.mktemp('models'))
    return {name: export_tiny(folder, name)[0] for name in ('energyflow', 'rnce')}


def _copy_family(src: str, folder: str) -> str:
    for graph in ('sampler', 'warm_sampler', 'energy', 'gradient', 'proposal'):
        if os.path.exists(graph_path(src, graph)):
            shutil.copy(graph_path(src, graph), folder)
    return os.path.join(folder, os.path.basename(src))


def _rewrite_metadata(path: str, **changes) -> None:
    model = onnx.load(path)
    props = {p.key: p.value for p in model.metadata_props}
    data = json.loads(props[METADATA_KEY])
    data.update(changes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(data)})
    onnx.save(model, path)


def test_loads_validates_and_warms_up(family):
    model = load_model(family['energyflow'], joint_names=list(reversed(JOINTS)))
    assert model.provider == 'cpu' and model.fallback is None
    assert sorted(model.sessions) == ['energy', 'sampler', 'warm_sampler']
    assert model.metadata.method == 'energyflow' and model.metadata.joint_names == tuple(JOINTS)
    assert model._runners, 'warm-up should have prepared the bound buffers'
    with_grad = load_model(family['energyflow'], graphs=['sampler', 'gradient'], warm_up=False)
    assert sorted(with_grad.sessions) == ['gradient', 'sampler']
    assert sorted(load_model(family['rnce']).sessions) == ['energy', 'proposal', 'sampler',
                                                             'warm_sampler']


def test_a_proposal_the_sampler_never_calls_gets_no_session(tmp_path):
    # proposal_rank holds the proposal in its sampler graph; interpolating R-NCE starts from
    # Gaussian noise. Both export the proposal file, and the node loaded and warmed it up.
    for name, steps in (('rnce', 0), ('irnce', None)):
        path, _ = export_tiny(str(tmp_path), name, n_steps=steps)
        assert os.path.exists(graph_path(path, 'proposal'))
        model = load_model(path)
        assert 'proposal' not in model.sessions and 'sampler' in model.sessions
        assert sorted(load_model(path, graphs=['sampler', 'proposal']).sessions) == [
            'proposal', 'sampler']                  # still there when asked for


def test_missing_and_non_onnx_files_raise_specific_errors(tmp_path, family):
    with pytest.raises(ModelNotFoundError, match='not found'):
        load_model(str(tmp_path / 'absent.onnx'))
    junk = tmp_path / 'junk.onnx'
    junk.write_bytes(b'\x00this is not a protobuf model\xff' * 10)
    with pytest.raises(NotAnOnnxModelError, match='junk.onnx: not an ONNX model'):
        load_model(str(junk))
    with pytest.raises(ModelNotFoundError, match='.onnx sampler file'):
        load_model(str(tmp_path / 'model.pt'))
    path = _copy_family(family['rnce'], str(tmp_path))
    os.unlink(graph_path(path, 'proposal'))
    with pytest.raises(ModelNotFoundError, match='proposal'):
        load_model(path)


def test_metadata_is_read_without_building_a_session(tmp_path, family, monkeypatch):
    # a session build is quadratic in the node count: minutes for a fused U-Net sampler
    import onnxruntime as ort

    expected = {p.key: p.value for p in onnx.load(family['energyflow']).metadata_props}
    monkeypatch.setattr(ort, 'InferenceSession', None)           # any session: TypeError
    meta = read_metadata(family['energyflow'])
    assert json.loads(meta.to_json()) == json.loads(expected[METADATA_KEY])
    truncated = tmp_path / 'cut.onnx'
    truncated.write_bytes(open(family['energyflow'], 'rb').read()[:-7])
    with pytest.raises(NotAnOnnxModelError, match='cut.onnx: not an ONNX model'):
        read_metadata(str(truncated))


def test_a_graph_onnxruntime_cannot_load_is_named(tmp_path, family):
    path = _copy_family(family['energyflow'], str(tmp_path))
    model = onnx.load(graph_path(path, 'energy'))
    model.graph.node[0].op_type = 'NoSuchOperator'           # metadata intact, graph broken
    onnx.save(model, graph_path(path, 'energy'))
    with pytest.raises(NotAnOnnxModelError,
                       match=r'\.energy\.onnx: not an ONNX model onnxruntime can load'):
        load_model(path)


def test_unknown_format_version_and_bad_metadata(tmp_path, family):
    path = _copy_family(family['energyflow'], str(tmp_path))
    sampler = read_metadata(path).sampler.to_dict()
    _rewrite_metadata(path, sampler={**sampler, 'ddim_steps': 0})
    with pytest.raises(ModelMetadataError, match="'sampler.ddim_steps' = 0 must be an integer"):
        read_metadata(path)
    _rewrite_metadata(path, sampler={**sampler, 'kind': 'proposal_rank'})   # has schedules
    with pytest.raises(ModelMetadataError, match='proposal_rank sampler draws from the proposal'):
        read_metadata(path)
    _rewrite_metadata(path, sampler=sampler, format_version=99)
    with pytest.raises(ModelVersionError, match='version 99 is not supported'):
        load_model(path)
    _rewrite_metadata(path, format_version=1, horizon='many')
    with pytest.raises(ModelMetadataError):
        read_metadata(path)
    _rewrite_metadata(path, horizon=4, executed_steps=9)
    with pytest.raises(ModelMetadataError, match='executed_steps = 9'):
        load_model(path)
    plain = onnx.load(path)
    del plain.metadata_props[:]
    onnx.save(plain, path)
    with pytest.raises(ModelMetadataError, match='without energyflow_ros metadata'):
        load_model(path)


@pytest.mark.parametrize('change, match', [
    ({'executed_steps': 4.7}, "'executed_steps' = 4.7 must be an integer"),
    ({'horizon': '8'}, "'horizon' = '8' must be an integer"),
    ({'format_version': True}, 'version True is not supported'),
    ({'sampler': {'n_particles': True}}, "'sampler.n_particles' = True must be an integer"),
    ({'sampler': {'rank_sigma': float('nan')}}, "'sampler.rank_sigma' = nan must be a finite"),
    ({'sampler': {'cold': {'init_std': float('nan')}}}, "'sampler.cold.init_std' = nan"),
    ({'sampler': {'cold': {'init_std': -5.0}}}, "'sampler.cold.init_std' = -5.0"),
    ({'reward_sigma': float('inf')}, "'reward_sigma' = inf must be a finite"),
    ({'obs_std': 'tiny'}, 'std values must be >= 1e-06 \\(smallest: 1e-39\\)'),
    ({'action_names': 'repeated'}, "action_names .* \\(\\['a'\\] repeated\\)"),
    ({'reward_reference': [[[0.0, 0.0]], [[0.0]]]}, 'reward_reference is ragged'),
    ({'reward_reference': [[[0.0, 0.0]]]}, 'reward_reference has shape \\(1, 1, 2\\)'),
])
def test_metadata_numbers_are_checked_for_type_range_and_finiteness(tmp_path, family, change,
                                                                      match):
    path = _copy_family(family['energyflow'], str(tmp_path))
    model = onnx.load(path)
    data = json.loads({p.key: p.value for p in model.metadata_props}[METADATA_KEY])
    key, value = next(iter(change.items()))
    if key == 'sampler':
        inner = next(iter(value))
        if inner == 'cold':
            value = {**data['sampler'], 'cold': {**data['sampler']['cold'], **value['cold']}}
        else:
            value = {**data['sampler'], **value}
    if value == 'tiny':
        value = [1e-39] + data['obs_std'][1:]
    if value == 'repeated':
        value = ['a'] * len(data['action_names'])
    _rewrite_metadata(path, **{key: value})
    with pytest.raises(ModelMetadataError, match=match):
        read_metadata(path)


def test_metadata_that_does_not_fit_the_graphs_is_refused_naming_the_file(tmp_path, family):
    path = _copy_family(family['energyflow'], str(tmp_path))
    horizon = read_metadata(path).horizon
    for graph in ('sampler', 'warm_sampler', 'energy', 'gradient'):
        _rewrite_metadata(graph_path(path, graph), horizon=horizon // 2, executed_steps=1,
                          reward_reference=[])
    with pytest.raises(ModelMetadataError, match=(
            f"energyflow.onnx: the metadata \\(horizon {horizon // 2}, .*does not fit the "
            "sampler graph: input 'init' has shape")):
        load_model(path, warm_up=False)  # checked without running a graph


def test_family_files_must_belong_together(tmp_path, family):
    path = _copy_family(family['energyflow'], str(tmp_path))
    _rewrite_metadata(graph_path(path, 'energy'), data_sha256='0' * 64)
    with pytest.raises(ModelMetadataError, match='does not belong to the export'):
        load_model(path)
    energy_file = graph_path(family['energyflow'], 'energy')
    renamed = str(tmp_path / 'energy_as_model.onnx')
    shutil.copy(energy_file, renamed)
    with pytest.raises(ModelMetadataError, match="holds the 'energy' graph"):
        load_model(renamed)


def test_joint_mismatch_is_specific(family):
    with pytest.raises(JointMismatchError, match='commands 2 joints'):
        load_model(family['energyflow'], joint_names=['shoulder'])
    with pytest.raises(JointMismatchError, match=r"lack \['elbow'\] and add \['wrist'\]"):
        load_model(family['energyflow'], joint_names=['shoulder', 'wrist'])


def test_unavailable_gpu_falls_back_to_cpu_with_one_warning(family, caplog):
    caplog.set_level(logging.WARNING, logger='energyflow_ros.runtime')
    model = load_model(family['energyflow'], providers=ProviderConfig(device='cuda'))
    assert model.provider == 'cpu'
    assert 'CUDAExecutionProvider was requested' in model.fallback
    records = [r for r in caplog.records if r.name == 'energyflow_ros.runtime']
    assert len(records) == 1 and 'running on CPU' in records[0].getMessage()


def test_provider_chains_and_config_validation(tmp_path):
    everything = ['TensorrtExecutionProvider', 'CUDAExecutionProvider', 'CPUExecutionProvider']
    cache = str(tmp_path / 'engines')
    chain, fallback = provider_chain(ProviderConfig(device='tensorrt', trt_engine_cache_dir=cache),
                                     everything)
    assert fallback is None and [p[0] if isinstance(p, tuple) else p for p in chain] == everything
    assert chain[0][1]['trt_engine_cache_path'] == cache and os.path.isdir(cache)
    chain, _ = provider_chain(ProviderConfig(device='cuda', cuda_graphs=True), everything)
    assert chain[0] == ('CUDAExecutionProvider', {'device_id': '0', 'enable_cuda_graph': '1'})
    chain, fallback = provider_chain(ProviderConfig(device='tensorrt'), ['CPUExecutionProvider'])
    assert chain == ['CPUExecutionProvider'] and 'TensorrtExecutionProvider' in fallback
    with pytest.raises(ProviderConfigError, match="device = 'gpu'"):
        ProviderConfig(device='gpu')
    with pytest.raises(ProviderConfigError, match='intra_op_threads'):
        ProviderConfig(intra_op_threads=-1)


def test_io_binding_and_plain_runs_agree(family):
    bound = load_model(family['energyflow'], warm_up=False)
    plain = load_model(family['energyflow'], providers=ProviderConfig(io_binding=False),
                       warm_up=False)
    rng = np.random.default_rng(0)
    feeds = {'obs': rng.normal(size=(2, 6)).astype(np.float32),
             'actions': rng.normal(size=(2, 7, 4, 2)).astype(np.float32),
             'sigma': np.float32([0.3])}
    first = bound.run('energy', feeds)['energies'].copy()
    np.testing.assert_array_equal(first, plain.run('energy', feeds)['energies'])
    feeds['obs'] = feeds['obs'] + 1.0      # the same bound buffers, new values
    second = bound.run('energy', feeds)['energies']
    np.testing.assert_array_equal(second, plain.run('energy', feeds)['energies'])
    assert not np.allclose(first, second)
    with pytest.raises(KeyError, match='not loaded'):
        bound.run('gradient', feeds)


def test_bound_runners_pass_run_options_only_for_a_cuda_graph(family):
    # onnxruntime looks the graph id up in the run options on every run, and a missing entry
    # costs a caught exception each time: without a CUDA graph, no options at all
    import onnxruntime as ort
    session = ort.InferenceSession(graph_path(family['energyflow'], 'energy'),
                                   providers=['CPUExecutionProvider'])
    shapes = {'obs': (1, 6), 'actions': (1, 3, 4, 2), 'sigma': (1,)}
    feeds = {name: np.ones(shape, np.float32) for name, shape in shapes.items()}
    plain, graphed = BoundRunner(session, shapes), BoundRunner(session, shapes, graph_id=3)
    assert plain.options is None
    assert graphed.options.get_run_config_entry('gpu_graph_id') == '3'
    np.testing.assert_array_equal(plain.run(feeds)['energies'], graphed.run(feeds)['energies'])


def test_runtime_modules_do_not_import_torch():
    code = ('import sys\nimport energyflow_ros.runtime.onnx_model, energyflow_ros.runtime.planner'
            '\nimport energyflow_ros.runtime.reward, energyflow_ros.runtime.providers\n'
            'print("torch" in sys.modules)')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == 'False'


def test_memory_pattern_reuse_is_off_unless_asked():
    from energyflow_ros.runtime.providers import session_options
    assert session_options(ProviderConfig()).enable_mem_reuse is False
    assert session_options(ProviderConfig(memory_reuse=True)).enable_mem_reuse is True
