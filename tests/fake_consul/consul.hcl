# STAND-IN (nomad-build tests) of HashiCorp's default /etc/consul.d/consul.hcl:
# the one setting it leaves uncommented (the rest of HashiCorp's file is commented
# documentation). Options: https://www.consul.io/docs/agent/options.html

data_dir = "/opt/consul"
