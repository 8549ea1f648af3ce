#!/bin/sh

# set path to cryosparcm
cryosparcm=livedm
# get variables
project_uid=$1
session_uid=$2
datatype=$3
status=$4

echo "Running data management script on "$CRYOSPARC_MASTER_HOSTNAME:$CRYOSPARC_BASE_PORT
echo "cryosparcm: $cryosparcm";
echo ""
echo "project_uid: $project_uid";
echo "session_uid: $session_uid";
echo "datatype: $datatype";
echo "status: $status";
echo ""

datatype_size=$(${cryosparcm} rtpcli "get_datatype_size(project_uid = '$project_uid', session_uid = '$session_uid', datatype = '$datatype')")
datatype_filepaths_json=$(${cryosparcm} rtpcli "get_datatype_file_paths(project_uid = '$project_uid', session_uid = '$session_uid', datatype = '$datatype')")

echo "Total size of $datatype datatype in $project_uid $session_uid is $datatype_size bytes"
echo ""
# echo "All $datatype filepaths: "
# echo $datatype_filepaths_json

if [ $status = 'archiving' ]; then

# do something with the filepaths here

# update the status for this data type
echo "Changing data management state for $datatype in $project_uid $session_uid to 'archived'"
${cryosparcm} rtpcli "change_session_data_management_state(project_uid = '$project_uid', session_uid = '$session_uid', datatype = '$datatype', status = 'archived')"
RESULT=$?
if [ $RESULT -eq 0 ]; then
echo "SUCCESS changed data management state for $datatype in $project_uid $session_uid to 'archived'"
else
echo "FAILED changing data management state for $datatype in $project_uid $session_uid to 'archived'. Exiting"
exit 1;
fi
fi
