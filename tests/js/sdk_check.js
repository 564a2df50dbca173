// sdk_check.js: drives the official @smartthings/core-sdk against a base URL
// (the proxy) the way an integration would, and prints what it saw as JSON
// for the pytest suite to check. Usage: node sdk_check.js BASE_URL TOKEN
'use strict';
const { SmartThingsClient, BearerTokenAuthenticator } = require('@smartthings/core-sdk');

async function main() {
    const [baseURL, token] = process.argv.slice(2);
    const client = new SmartThingsClient(new BearerTokenAuthenticator(token), {
        urlProvider: { baseURL, authURL: baseURL, keyApiURL: baseURL },
    });
    const out = {};
    // list() follows _links.next.href and refuses links on another origin
    const devices = await client.devices.list();
    out.deviceCount = devices.length;
    out.deviceIds = devices.map((d) => d.deviceId);
    const id = devices[0].deviceId;
    out.device = (await client.devices.get(id)).deviceId;
    out.statusBefore = (await client.devices.getStatus(id)).components.main.switch.switch.value;
    out.capabilityStatus = (await client.devices.getCapabilityStatus(id, 'main', 'switch')).switch.value;
    out.health = (await client.devices.getHealth(id)).state;
    const wanted = out.statusBefore === 'on' ? 'off' : 'on';
    const result = await client.devices.executeCommand(id, {
        component: 'main', capability: 'switch', command: wanted, arguments: [],
    });
    out.commandStatus = result.results[0].status;
    out.wanted = wanted;
    out.statusAfter = (await client.devices.getStatus(id)).components.main.switch.switch.value;
    out.locations = (await client.locations.list()).length;
    console.log(JSON.stringify(out));
}

main().catch((err) => {
    const status = err.response ? err.response.status : undefined;
    const body = err.response ? err.response.data : undefined;
    console.log(JSON.stringify({ error: String(err.message || err), status, body }));
    process.exit(1);
});
