import json, time, subprocess, os, sys, pytest

@pytest.fixture(autouse=True)
def _venv_path(monkeypatch):
    monkeypatch.setenv('PATH', os.path.dirname(sys.executable)+':'+os.environ['PATH'])

def test_probe(veth, bpf_objects, playbook):
    t=time.time()
    r = playbook([{"name": "load", "bpfd.core.bpf_xdp_program": {"name": veth.name+"-p100", "path": bpf_objects["xdp_pass"], "interface": veth.name, "priority": 100}},
                  {"name": "load2", "bpfd.core.bpf_xdp_program": {"name": veth.name+"-p50", "path": bpf_objects["xdp_pass"], "interface": veth.name, "priority": 50}},
                  {"name": "info", "bpfd.core.bpf_program_info": {"interface": veth.name}}], diff=True)
    print("time", time.time()-t)
    print(json.dumps(r, indent=1))
    print(veth.xdp_programs())
    print(subprocess.run(["bpftool","-j","link","show"],capture_output=True,text=True).stdout)
    print(subprocess.run(["bpftool","-j","prog","show"],capture_output=True,text=True).stdout)
    print(subprocess.run(["ip","-j","link","show", veth.name],capture_output=True,text=True).stdout)
