"""The README's parameter reference is what the nodes' descriptors say (regenerate to fix)."""

import os

from energyflow_ros.nodes.param_reference import BEGIN, END, reference_markdown

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'README.md')


def test_readme_parameter_reference_is_up_to_date():
    text = open(README, encoding='utf-8').read()
    section = BEGIN + text.split(BEGIN, 1)[1].split(END, 1)[0] + END
    generated = reference_markdown()
    assert '`model_path`' in generated and '`time_scale`' in generated
    assert section == generated, ('README parameter reference is stale: run python -m '
                                  'energyflow_ros.nodes.param_reference --update README.md')
