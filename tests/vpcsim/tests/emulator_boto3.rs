//! Other clients than the Rust SDK: boto3 (the library under the AWS CLI) drives the emulator
//! through `endpoint_url`, parses responses and modelled errors. Skipped, with a message, when
//! python3 with boto3 is not installed.
#![allow(clippy::unwrap_used)]

mod emulator_common;

use emulator_common::start;
use vpcsim::SimConfig;

const SCRIPT: &str = r#"
import json, sys
import boto3, botocore
ec2 = boto3.client("ec2", endpoint_url=sys.argv[1], region_name="us-west-2",
                   aws_access_key_id="AKIDVPCSIM", aws_secret_access_key="secret",
                   config=botocore.config.Config(retries={"max_attempts": 1}))
out = {}
sub = ec2.describe_subnets()["Subnets"][0]
out["available"] = sub["AvailableIpAddressCount"]
eni = ec2.create_network_interface(SubnetId=sub["SubnetId"], Ipv4PrefixCount=1,
    TagSpecifications=[{"ResourceType": "network-interface",
                        "Tags": [{"Key": "k", "Value": "v"}]}])["NetworkInterface"]
out["prefixes"] = [p["Ipv4Prefix"] for p in eni["Ipv4Prefixes"]]
eni2 = ec2.create_network_interface(SubnetId=sub["SubnetId"])["NetworkInterface"]
r = ec2.assign_private_ip_addresses(NetworkInterfaceId=eni2["NetworkInterfaceId"],
                                    SecondaryPrivateIpAddressCount=2)
out["assigned"] = [a["PrivateIpAddress"] for a in r["AssignedPrivateIpAddresses"]]
att = ec2.attach_network_interface(NetworkInterfaceId=eni2["NetworkInterfaceId"],
                                   InstanceId=sys.argv[2], DeviceIndex=1)
d = ec2.describe_network_interfaces(NetworkInterfaceIds=[eni2["NetworkInterfaceId"]])
a = d["NetworkInterfaces"][0]["Attachment"]
out["attachment"] = [a["AttachmentId"] == att["AttachmentId"], a["Status"], a["DeviceIndex"],
                     str(type(a["AttachTime"]).__name__)]
try:
    ec2.delete_network_interface(NetworkInterfaceId="eni-0000000000000dead")
except botocore.exceptions.ClientError as e:
    out["error"] = [e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]]
n = 0
for page in ec2.get_paginator("describe_instance_types").paginate(PaginationConfig={"PageSize": 100}):
    n += len(page["InstanceTypes"])
out["types"] = n
inst = ec2.describe_instances(InstanceIds=[sys.argv[2]])["Reservations"][0]["Instances"][0]
out["instance_enis"] = len(inst["NetworkInterfaces"])
print(json.dumps(out))
"#;

#[tokio::test]
async fn boto3_drives_the_emulator() {
    let has_boto3 = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_boto3 {
        eprintln!("SKIPPED: python3 with boto3 is not installed");
        return;
    }
    let env = start(SimConfig::default(), "10.0.60.0/24", "m5.large").await;
    let out = tokio::process::Command::new("python3")
        .args(["-c", SCRIPT, &env.ep.ec2_url(), &env.node.instance_id])
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", "/nonexistent/vpcsim-test")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/vpcsim-test")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "boto3 script failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["available"], 250);
    assert_eq!(v["prefixes"].as_array().unwrap().len(), 1);
    assert_eq!(v["assigned"].as_array().unwrap().len(), 2);
    assert_eq!(
        v["attachment"],
        serde_json::json!([true, "attached", 1, "datetime"])
    );
    assert_eq!(
        v["error"],
        serde_json::json!(["InvalidNetworkInterfaceID.NotFound", 400])
    );
    assert_eq!(v["types"], awscni_limits::all().len());
    assert_eq!(v["instance_enis"], 2);
}
